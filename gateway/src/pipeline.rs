//! The pipeline, in one place: ingest -> normalize -> dedup -> route -> sink.
//!
//! HTTP handlers normalize and seal the personal data (in parallel, on the async workers) and
//! [`Pipeline::submit`] the result into a bounded queue; a full queue is refused at once
//! ([`SubmitError::Overloaded`]), never waited on or dropped. One stage thread drains the queue into
//! batches and, per batch: deduplicates, routes, writes everything in one atomic store batch with
//! the batch's audit entries and one fsync (group commit), and only then acknowledges each request.
//! The same thread appends audit events of other hops and carries out erasures, so the audit log
//! has one writer and one order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inquiry_connectors::{Channel, Inquiry, Region};
use metrics::{counter, gauge, histogram};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::compliance::audit::{AuditEvent, AuditLog};
use crate::compliance::sha256_hex;
use crate::compliance::subjects::{Subject, Subjects};
use crate::routing::{Decision, Disposition, FallbackRouter, Priority, RouteOutcome, Router};
use crate::spool::{Spool, SpoolSink};
use crate::store::{message_hash, MessageHash, OutboxEntry, Store, StoreBatch, StoreError};
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

impl StoredInquiry {
    /// The stored inquiry `id`; `None` when this store does not hold it or its record does not
    /// read (callers that go through many skip such a record).
    pub fn load(store: &Store, id: Uuid) -> Result<Option<StoredInquiry>, StoreError> {
        Ok(store.get_inquiry(id)?.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }
}

/// A dead letter: an inquiry that a router failed on and the fallback route took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The inquiry.
    pub inquiry_id: Uuid,
    /// Machine-readable reason.
    pub reason: String,
    /// Details, sealed for the buyer's data subject like a personal field ([`DEAD_LETTER_FIELD`]):
    /// a plugin's error text may quote what it saw. An erasure of the buyer replaces it with
    /// [`ERASED_DETAIL`]; older versions on disk until compaction hold only ciphertext.
    pub detail: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// One normalized inquiry handed to the pipeline, its personal data sealed for its data subject.
#[derive(Clone)]
pub struct Submission {
    /// The normalized inquiry (personal data in clear in memory, sealed in its JSON).
    pub inquiry: Inquiry,
    /// Its JSON, serialized by the caller (in parallel) rather than on the stage thread.
    pub inquiry_json: Vec<u8>,
    /// The original payload sealed for the data subject; empty when not kept.
    pub raw: Vec<u8>,
    /// The client's Idempotency-Key, when it sent one.
    pub idempotency_key: Option<String>,
    /// Keyed fingerprint of the clear payload: the same key with another payload is a conflict.
    pub fingerprint: [u8; 32],
    /// The inquiry's data subject.
    pub subject: Arc<Subject>,
    /// Who delivered it (`api_key:<id>`, `webhook:<connector>/<account>`, `poller:...`), audited.
    pub actor: String,
    /// The `normalized` hop of its audit entry (envelope version, SHA-256 of each sealed field
    /// and of the sealed payload) as JSON, hashed by the caller rather than on the stage thread.
    pub normalized_hop: Box<RawValue>,
}

impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission").field("id", &self.inquiry.id).field("actor", &self.actor).finish_non_exhaustive()
    }
}

impl Submission {
    /// Seals `inquiry` for its data subject and makes it a submission. `raw` is the clear original
    /// payload; it is kept (sealed) only when `keep_raw`: a delivery that carries several buyers'
    /// messages is not kept, since erasing one buyer could not remove it.
    pub fn seal(
        mut inquiry: Inquiry,
        raw: &[u8],
        keep_raw: bool,
        idempotency_key: Option<String>,
        actor: &str,
        subjects: &Subjects,
    ) -> Result<Self, StoreError> {
        let sealed = subjects.seal(&mut inquiry, keep_raw.then_some(raw))?;
        let inquiry_json = serde_json::to_vec(&inquiry).expect("inquiries serialize");
        let normalized_hop = serde_json::value::to_raw_value(&NormalizedHop {
            envelope: inquiry.schema_version,
            raw_sha256: (!sealed.raw.is_empty()).then(|| sha256_hex(&sealed.raw)),
            sealed_sha256: SealedHashes(&inquiry.sealed),
        })
        .expect("hashes serialize");
        Ok(Submission {
            inquiry,
            inquiry_json,
            normalized_hop,
            raw: sealed.raw,
            idempotency_key,
            fingerprint: subjects.vault().fingerprint(raw),
            subject: sealed.subject,
            actor: actor.to_owned(),
        })
    }

    /// Seals the inquiry again for the subject its identity resolves to now (its subject was
    /// erased while it waited in the queue: the buyer wrote again, and that is new data).
    fn reseal(&mut self, subjects: &Subjects) -> Result<(), StoreError> {
        let raw = subjects.vault().open_bytes(
            &self.subject.key,
            self.inquiry.id,
            crate::compliance::subjects::RAW_FIELD,
            &self.raw,
        );
        let mut inquiry = self.inquiry.clone();
        if inquiry.personal.conversation_is_buyer {
            inquiry.external.conversation_id.clear();
        }
        let keep_raw = !self.raw.is_empty();
        let resealed = Submission::seal(
            inquiry,
            raw.as_deref().unwrap_or_default(),
            keep_raw && raw.is_ok(),
            self.idempotency_key.take(),
            &self.actor,
            subjects,
        )?;
        *self = Submission { fingerprint: self.fingerprint, ..resealed };
        Ok(())
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
    /// The store's disk has less free space than `store.min_free_mb`: retry later.
    #[error("the store's disk is almost full")]
    DiskFull,
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

/// An erasure for the stage to carry out.
#[derive(Debug, Clone)]
pub struct Erasure {
    /// The subject's pseudonym.
    pub pseudonym: String,
    /// The subject's index.
    pub index: [u8; 32],
    /// The erasure record kept (request id, time; no personal data).
    pub record: Vec<u8>,
    /// The audit event of the erasure.
    pub event: AuditEvent,
}

/// A conversion report for the stage to record. The stage checks it, in its write order,
/// against the buyer's erasure, an earlier report and the inquiry's removal, then writes the
/// record and its audit entry in one atomic write: an erasure either comes before it (and it is
/// refused) or after it (and removes it).
#[derive(Debug, Clone)]
pub struct ConversionRecord {
    /// The inquiry that led to the order.
    pub inquiry_id: Uuid,
    /// The pseudonym of the inquiry's buyer.
    pub pseudonym: String,
    /// The conversion as stored (JSON).
    pub record: Vec<u8>,
    /// Its audit event (`inquiry.converted`).
    pub event: AuditEvent,
}

/// What the stage did with a [`ConversionRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversionOutcome {
    /// Recorded and audited.
    Recorded,
    /// A conversion was recorded before (this one, as stored): nothing written.
    Kept(Vec<u8>),
    /// The inquiry is no longer stored: nothing written.
    Gone,
    /// The buyer was erased: nothing written.
    Erased,
}

/// What a job produced.
#[derive(Debug)]
pub enum Outcome {
    /// One ack per submitted inquiry.
    Acks(Vec<Ack>),
    /// The events are durable.
    Audited,
    /// The subject is erased; these were its inquiries (records now stripped of sealed data).
    Erased(Vec<Uuid>),
    /// What became of a conversion report.
    Converted(ConversionOutcome),
    /// This many expired inquiries were removed.
    Expired(usize),
}

/// Sizes of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct PipelineLimits {
    /// Requests that may wait in the queue.
    pub queue_capacity: usize,
    /// Most inquiries in one group commit.
    pub max_batch_inquiries: usize,
}

/// The field name a dead letter's detail is sealed under (see [`DeadLetter::detail`]).
pub const DEAD_LETTER_FIELD: &str = "dead_letter";

/// A dead letter's `detail` once its buyer was erased.
pub const ERASED_DETAIL: &str = "erased";

/// The `raw_ref` of an inquiry whose buyer was erased (its sealed fields and payload are gone).
pub const ERASED_RAW_REF: &str = "erased";

/// What a job asks of the stage.
enum Work {
    /// Store inquiries (and a poller's cursor in the same atomic write).
    Inquiries { items: Vec<Submission>, cursor: Option<(String, String)> },
    /// Append audit events.
    Audit(Vec<AuditEvent>),
    /// Erase a data subject (always in a batch of its own).
    Erase(Erasure),
    /// Record a conversion report.
    Convert(ConversionRecord),
    /// Remove expired inquiries (retention): `(id, buyer pseudonym)`; by the stage, so that no
    /// conversion report is recorded for an inquiry removed meanwhile.
    Expire(Vec<(Uuid, String)>),
}

struct Job {
    work: Work,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

impl Job {
    fn items(&self) -> &[Submission] {
        match &self.work {
            Work::Inquiries { items, .. } => items,
            _ => &[],
        }
    }
}

/// What the stage thread needs besides the queue.
pub struct StageParts {
    /// The store.
    pub store: Store,
    /// The router.
    pub router: Arc<dyn Router>,
    /// The fallback route.
    pub fallback: FallbackRouter,
    /// The spool (outboxes of the sinks).
    pub spool: Arc<Spool>,
    /// Commit sequence of the next new inquiry.
    pub next_seq: u64,
    /// The audit log's writer.
    pub audit: AuditLog,
    /// The data subjects.
    pub subjects: Arc<Subjects>,
}

/// Handle to the running pipeline; cheap to clone. When every handle is dropped the stage
/// thread commits what is queued and stops.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Job>,
    store_ok: Arc<AtomicBool>,
    store: Store,
    spool: Arc<Spool>,
    subjects: Arc<Subjects>,
}

/// See [`Pipeline::audit_handle`].
pub struct AuditHandle(mpsc::WeakSender<Job>);

impl AuditHandle {
    /// Queues `events`, waiting for room (from a thread outside the runtime); `false` once the
    /// pipeline has stopped.
    pub fn blocking_audit(&self, events: Vec<AuditEvent>) -> bool {
        let Some(tx) = self.0.upgrade() else { return false };
        let (reply, _) = oneshot::channel();
        tx.blocking_send(Job { work: Work::Audit(events), enqueued: Instant::now(), reply }).is_ok()
    }
}

impl Pipeline {
    /// Starts the stage and sync threads. The returned handle joins both.
    pub fn start(parts: StageParts, limits: PipelineLimits) -> Result<(Pipeline, JoinHandle<()>), StoreError> {
        let StageParts { store, router, fallback, spool, next_seq, audit, subjects } = parts;
        subjects.load_erased(store.erased_pseudonyms()?);
        let (tx, rx) = mpsc::channel(limits.queue_capacity);
        let store_ok = Arc::new(AtomicBool::new(true));
        gauge!(telemetry::QUEUE_CAPACITY).set(limits.queue_capacity as f64);
        // Two written batches may wait for their fsync; then the stage waits too (backpressure).
        let (to_sync, written) = std::sync::mpsc::sync_channel(2);
        let syncer = Syncer { written, store: store.clone(), store_ok: store_ok.clone(), spool: spool.clone() };
        let handle_store = store.clone();
        let stage = Stage {
            rx,
            store,
            router,
            fallback,
            max_batch: limits.max_batch_inquiries,
            to_sync,
            spool: spool.clone(),
            next_seq,
            audit,
            subjects: subjects.clone(),
            written_subjects: Default::default(),
            held: None,
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
        Ok((Pipeline { tx, store_ok, store: handle_store, spool, subjects }, thread))
    }

    /// When the oldest inquiry some sink has not taken yet was queued (retention keeps it).
    pub fn oldest_spooled(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let ms = self.spool.oldest_pending_ms()?;
        Ok(ms.and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()))
    }

    /// The vault the stage seals with (its keyed fingerprints serve audit entries too).
    pub fn vault(&self) -> &crate::compliance::vault::Vault {
        self.subjects.vault()
    }

    /// Queues inquiries and waits until they are durable. Refuses at once when the queue is full.
    pub async fn submit(&self, items: Vec<Submission>) -> Result<Vec<Ack>, SubmitError> {
        self.submit_with_cursor(items, None).await
    }

    /// Appends audit events and waits until they are durable.
    pub async fn audit(&self, events: Vec<AuditEvent>) -> Result<(), SubmitError> {
        self.run(Work::Audit(events)).await.map(|_| ())
    }

    /// Appends audit events, waiting for room in a full queue (in turn with other waiters, never
    /// refused as `Overloaded`), then until they are durable: the gateway's own bookkeeping that
    /// ingest must not crowd out (a sink's deliveries, acknowledgements).
    pub async fn audit_in_turn(&self, events: Vec<AuditEvent>) -> Result<(), SubmitError> {
        self.queue(Work::Audit(events), true).await.map(|_| ())
    }

    /// Records a conversion report (see [`ConversionRecord`]) and waits until it is durable.
    pub async fn record_conversion(&self, conversion: ConversionRecord) -> Result<ConversionOutcome, SubmitError> {
        match self.run(Work::Convert(conversion)).await? {
            Outcome::Converted(outcome) => Ok(outcome),
            _ => Err(SubmitError::StageFailed),
        }
    }

    /// Removes expired inquiries `(id, buyer pseudonym)` with their conversion, subject link,
    /// place in the message index and reach-out state, and waits until that is durable.
    /// Unlike requests, it waits for room in a full queue (in turn with other waiters).
    /// Answers how many it removed (one whose reach-out state cannot be read stays).
    pub async fn remove_expired(&self, expired: Vec<(Uuid, String)>) -> Result<usize, SubmitError> {
        match self.queue(Work::Expire(expired), true).await? {
            Outcome::Expired(removed) => Ok(removed),
            _ => Err(SubmitError::StageFailed),
        }
    }

    /// A handle for a thread outside the runtime that writes audit entries but must not keep
    /// the stage running (the plugin watcher: the stage holds the router that holds it).
    pub fn audit_handle(&self) -> AuditHandle {
        AuditHandle(self.tx.downgrade())
    }

    /// Appends audit events without waiting. When the queue is full they are counted as dropped
    /// (`inquiry_gateway_audit_dropped_total`): refused requests must not crowd out inquiries.
    pub fn audit_soon(&self, events: Vec<AuditEvent>) {
        let count = events.len() as u64;
        let (reply, _) = oneshot::channel();
        if self.tx.try_send(Job { work: Work::Audit(events), enqueued: Instant::now(), reply }).is_err() {
            counter!(telemetry::AUDIT_DROPPED).increment(count);
            tracing::warn!(events = count, "pipeline queue full: audit events of refused requests dropped");
        }
    }

    /// Wakes the stage so that it signs a tree head over entries written since the last one,
    /// even when no traffic comes (skipped when the queue is full: the stage is busy anyway).
    pub fn tick(&self) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.try_send(Job { work: Work::Audit(Vec::new()), enqueued: Instant::now(), reply });
    }

    /// Waits until sink `name` has taken (or skipped) every inquiry committed so far, `limit` at
    /// most; false when it has not by then (or there is no such sink). A sink's own erasure must
    /// come after what it was sent before the local erasure, or it would be undone.
    pub async fn sink_caught_up(&self, name: &str, limit: Duration) -> bool {
        let end = self.spool.durable_end();
        let Some(sink) = self.spool.sinks.iter().find(|s| s.name == name) else { return false };
        let deadline = Instant::now() + limit;
        loop {
            if sink.forwarded_end.load(std::sync::atomic::Ordering::Acquire) >= end {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Erases a data subject and waits until the erasure is durable; returns its inquiries.
    pub async fn erase(&self, erasure: Erasure) -> Result<Vec<Uuid>, SubmitError> {
        match self.run(Work::Erase(erasure)).await? {
            Outcome::Erased(ids) => Ok(ids),
            _ => Err(SubmitError::StageFailed),
        }
    }

    async fn run(&self, work: Work) -> Result<Outcome, SubmitError> {
        self.queue(work, false).await
    }

    /// Queues `work` for the stage and waits for its outcome; a full queue is `Overloaded`
    /// unless `wait_for_room`.
    async fn queue(&self, work: Work, wait_for_room: bool) -> Result<Outcome, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { work, enqueued: Instant::now(), reply };
        if wait_for_room {
            self.tx.send(job).await.map_err(|_| SubmitError::Stopped)?;
        } else {
            self.tx.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
            })?;
        }
        Ok(answer.await.map_err(|_| SubmitError::StageFailed)??)
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
        if self.spool.disk_low() {
            return Err(SubmitError::DiskFull);
        }
        match self.run(Work::Inquiries { items, cursor }).await? {
            Outcome::Acks(acks) => Ok(acks),
            _ => Err(SubmitError::StageFailed),
        }
    }

    /// True while the stage runs and the store takes writes. A failed fsync poisons the store
    /// for good (fjall refuses all writes after it), also one met by another writer (reach,
    /// compliance, retention), so this stays false until a restart.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed() && self.store_ok.load(Ordering::Relaxed) && !self.store.is_poisoned()
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
    audit: AuditLog,
    subjects: Arc<Subjects>,
    /// Subjects whose record this stage has written (no need to write it with every inquiry).
    written_subjects: std::collections::HashSet<[u8; 32]>,
    /// An erasure received while a batch was being gathered: it goes first in the next batch, alone.
    held: Option<Job>,
}

/// A batch written to the store, waiting for the fsync that makes it durable.
struct Written {
    jobs: Vec<Job>,
    outcomes: Vec<Outcome>,
    /// When its write started (the store hop runs until the fsync ends).
    write_started: Instant,
    /// Sequence numbers below this are in this batch or earlier ones.
    seq_end: u64,
    /// Audit entries below this index are in this batch or earlier ones.
    audit_end: u64,
    /// The records for the forwarders, one per new inquiry in job order (empty without sinks).
    committed: Vec<Committed>,
    /// The generation of the recent-records memory the batch was written in.
    generation: u64,
}

/// A new inquiry's sequence number and, when some sink takes it, its id, routing decision and
/// record JSON: the sync thread keeps them in memory for the forwarders once they are durable.
type Committed = (u64, Option<(Uuid, Decision, Vec<u8>)>);

impl Stage {
    fn run(mut self) {
        while let Some(first) = self.held.take().or_else(|| self.rx.blocking_recv()) {
            let seq_start = self.next_seq;
            let checkpoint = self.audit.checkpoint();
            let mut size = first.items().len();
            // An erasure, and a retention removal, are written in a batch of their own: a
            // message received again in the same batch would be deduplicated against the
            // inquiry they remove (dedup runs before the removals are written).
            let alone = |work: &Work| matches!(work, Work::Erase(_) | Work::Expire(_));
            let first_alone = alone(&first.work);
            let mut jobs = vec![first];
            while size < self.max_batch && !first_alone {
                match self.rx.try_recv() {
                    Ok(job) if alone(&job.work) => {
                        self.held = Some(job);
                        break;
                    }
                    Ok(job) => {
                        size += job.items().len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            gauge!(telemetry::QUEUE_DEPTH).set(self.rx.len() as f64);
            let started = Instant::now();
            let mut sealed = Vec::with_capacity(jobs.len());
            for mut job in jobs {
                record_per_channel(Hop::Queue, job.items(), started - job.enqueued);
                // Sealed under a subject erased since: sealed again under a new one. If that
                // fails the job fails (a retry seals it afresh): written as it is, it would bring
                // the erased subject's key back.
                let mut resealed = Ok(());
                if let Work::Inquiries { items, .. } = &mut job.work {
                    for item in items.iter_mut().filter(|i| self.subjects.is_erased(&i.inquiry.buyer.pseudonym)) {
                        resealed = item.reseal(&self.subjects);
                        if resealed.is_err() {
                            break;
                        }
                    }
                }
                match resealed {
                    Ok(()) => sealed.push(job),
                    Err(err) => {
                        tracing::error!(error = %err, "an inquiry of an erased subject could not be sealed again");
                        let _ = job.reply.send(Err(err));
                    }
                }
            }
            let jobs = sealed;
            if jobs.is_empty() {
                continue;
            }
            let written = match &jobs[0].work {
                Work::Erase(erasure) => {
                    self.erase(erasure).map(|ids| (vec![Outcome::Erased(ids)], Instant::now(), Vec::new()))
                }
                _ => self.write(&jobs),
            };
            match written {
                Ok((outcomes, write_started, committed)) => {
                    let (seq_end, audit_end) = (self.next_seq, self.audit.size());
                    let generation = self.spool.recent.generation();
                    let written = Written { jobs, outcomes, write_started, seq_end, audit_end, committed, generation };
                    if let Err(unsent) = self.to_sync.send(written) {
                        fail_jobs(unsent.0.jobs, &StoreError::from_message("the sync thread stopped"));
                    }
                }
                Err(err) => {
                    self.next_seq = seq_start; // nothing of the batch was written
                    self.audit.rollback(checkpoint);
                    // Its new subjects stay in the cache, not stored: the buyer's next inquiry
                    // (or one of this buyer's still queued) gets the same one, and writes it.
                    counter!(telemetry::STORE_ERRORS).increment(1);
                    tracing::error!(error = %err, jobs = jobs.len(), "store write failed; batch not acknowledged");
                    fail_jobs(jobs, &err);
                }
            }
        }
        // Cover everything written with a signed tree head before stopping.
        let mut batch = self.store.batch();
        if self.audit.sign_if_due(&mut batch, true).is_some() {
            if let Err(err) = batch.write().and_then(|()| self.store.sync()) {
                tracing::error!(error = %err, "the final audit tree head could not be stored");
            }
        }
        tracing::info!("pipeline stage stopped");
    }

    /// Erases a data subject in one atomic write: its key and pseudonym mapping go, its inquiries
    /// lose their sealed fields, original payloads and conversions, the erasure is audited.
    fn erase(&mut self, erasure: &Erasure) -> Result<Vec<Uuid>, StoreError> {
        self.subjects.mark_erased(&erasure.index, &erasure.pseudonym);
        let ids = self.store.inquiries_of(&erasure.pseudonym)?;
        let mut batch = self.store.batch();
        for id in &ids {
            let Some(record) = self.store.get_inquiry(*id)? else { continue };
            let Ok(mut stored) = serde_json::from_slice::<StoredInquiry>(&record) else { continue };
            stored.inquiry.sealed.clear();
            stored.inquiry.raw_ref = ERASED_RAW_REF.to_owned();
            // Like its conversion: the shop can trace an order to the buyer. Also where a connector
            // named the order in the ids (Shopify: `order:<id>`, `order:<id>:note`) or attributes.
            forget_order(&mut stored.inquiry);
            batch.replace_inquiry(*id, &serde_json::to_vec(&stored).expect("stored inquiries serialize"));
            // The order an inquiry led to can be traced to the buyer in the shop's own system.
            batch.remove_conversion(*id);
            // Its dead letter stays (the routing failure happened) without the plugin's words.
            if let Some(letter) = self.store.get_dead_letter(*id)? {
                if let Ok(mut letter) = serde_json::from_slice::<DeadLetter>(&letter) {
                    letter.detail = ERASED_DETAIL.to_owned();
                    batch.put_dead_letter(*id, serde_json::to_vec(&letter).expect("dead letters serialize"));
                }
            }
        }
        // The identity's record goes only while it is this subject's: after a failed attempt the
        // buyer may have written again and been given a new subject under the same identity.
        let still_this_subject = self.store.subject(&erasure.index)?.is_some_and(|record| {
            serde_json::from_slice::<crate::compliance::subjects::SubjectRecord>(&record)
                .map_or(true, |record| record.pseudonym == erasure.pseudonym)
        });
        batch.erase_subject(still_this_subject.then_some(&erasure.index), &erasure.pseudonym, &erasure.record);
        self.written_subjects.remove(&erasure.index);
        let mut event = erasure.event.clone();
        event.detail["inquiries"] = serde_json::json!(ids);
        self.audit.append(&mut batch, event);
        self.audit.sign_if_due(&mut batch, true);
        // Forwarders must read the rewritten records, not the copies in memory: gone before the
        // rewrite is visible (if the write fails, they only read the store meanwhile).
        self.spool.recent.clear();
        batch.write()?;
        Ok(ids)
    }

    /// Dedup, route and write one batch; returns one outcome per job, in order, when the write
    /// started, and the records for the forwarders.
    fn write(&mut self, jobs: &[Job]) -> Result<(Vec<Outcome>, Instant, Vec<Committed>), StoreError> {
        // Dedup: against the store and within this batch, by Idempotency-Key first, then by
        // message (the tail of the inquiry id, see store::MessageIndex).
        let dedup_started = Instant::now();
        let mut acks: Vec<Vec<Ack>> = Vec::with_capacity(jobs.len());
        let mut fresh: Vec<(&Submission, Option<IdempotencyKey>)> = Vec::new();
        let mut pending_keys: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut pending_messages: HashMap<MessageHash, Uuid> = HashMap::new();
        for job in jobs {
            let mut job_acks = Vec::with_capacity(job.items().len());
            for item in job.items() {
                let idempotency = IdempotencyKey::of(item);
                let earlier = match &idempotency {
                    Some(key) => match pending_keys.get(&key.key) {
                        Some(value) => Some(value.clone()),
                        None => self.store.find_dedup(&key.key)?,
                    }
                    .map(|value| key.ack_for(&value)),
                    None => None,
                };
                let id = item.inquiry.id;
                let earlier = earlier.or_else(|| {
                    let earlier = pending_messages.get(&message_hash(id)).copied();
                    let earlier = earlier.or_else(|| self.store.find_message(id))?;
                    Some(Ack { id: earlier, status: AckStatus::Duplicate })
                });
                match earlier {
                    Some(ack) => job_acks.push(ack),
                    None => {
                        pending_messages.insert(message_hash(id), id);
                        if let Some(key) = &idempotency {
                            pending_keys.insert(key.key.clone(), key.value(id));
                        }
                        job_acks.push(Ack { id, status: AckStatus::Accepted });
                        fresh.push((item, idempotency));
                    }
                }
            }
            acks.push(job_acks);
        }
        let all = || jobs.iter().flat_map(|j| j.items());
        record_per_channel(Hop::Dedup, all(), dedup_started.elapsed());

        // Route the new ones.
        let route_started = Instant::now();
        let decisions = self.route(&fresh.iter().map(|(item, _)| &item.inquiry).collect::<Vec<_>>());
        record_per_channel(Hop::Route, fresh.iter().map(|(item, _)| *item), route_started.elapsed());

        // Sink: one atomic batch; the syncer's fsync makes it durable.
        let write_started = Instant::now();
        let mut batch = self.store.batch();
        let mut subjects_written = Vec::new();
        // The records for the forwarders, kept in memory once the batch is durable.
        let mut committed = Vec::with_capacity(if self.spool.sinks.is_empty() { 0 } else { fresh.len() });
        // Each sink's outbox entries of this batch, written as one group per sink.
        let mut queued: Vec<Vec<OutboxEntry>> = vec![Vec::new(); self.spool.sinks.len()];
        for ((item, idempotency), (decision, dead_letter)) in fresh.iter().zip(decisions) {
            let id = item.inquiry.id;
            let mut record = Vec::with_capacity(item.inquiry_json.len() + 512);
            record.extend_from_slice(b"{\"inquiry\":");
            record.extend_from_slice(&item.inquiry_json);
            record.extend_from_slice(b",\"decision\":");
            serde_json::to_writer(&mut record, &decision).expect("decisions serialize");
            record.push(b'}');
            batch.put_inquiry(id, &record, &item.raw);
            if let Some(key) = idempotency {
                batch.put_dedup(&key.key, &key.value(id));
            }
            let pseudonym = &item.subject.key.pseudonym;
            // Not only when created (the creating request may have been refused: queue full, a bad
            // line in its batch, a duplicate) but whenever this stage has not written it yet.
            if !self.written_subjects.contains(&item.subject.index) {
                batch.put_subject(&item.subject.index, pseudonym, &item.subject.record);
                subjects_written.push(item.subject.clone());
            }
            batch.link_inquiry(pseudonym, id);
            // Data residency: a sink gets only the regions it is declared for.
            let entry = OutboxEntry { seq: self.next_seq, id, enqueued_ms: enqueued_ms() };
            self.next_seq += 1;
            let mut sinks: Vec<&SpoolSink> = Vec::with_capacity(self.spool.sinks.len());
            for (sink, group) in self.spool.sinks.iter().zip(&mut queued) {
                if sink.accepts(&item.inquiry) {
                    group.push(entry);
                    sinks.push(sink);
                } else if item.inquiry.buyer.country.is_none() {
                    // Held back from a sink outside the EU: worth seeing when every sink is.
                    counter!(telemetry::SINK_SKIPPED, "sink" => sink.name, "reason" => "unknown_country").increment(1);
                }
            }
            self.audit.append_entry(&mut batch, |index| IngestedEntry::new(index, item, &decision, &sinks));
            if let Some(letter) = dead_letter {
                // The detail may quote what a plugin saw: only its hash goes into the permanent log.
                let event = AuditEvent::new("inquiry.dead_lettered", "gateway").inquiry(id).subject(pseudonym).detail(
                    serde_json::json!({
                        "reason": letter.reason,
                        "detail_sha256": sha256_hex(letter.detail.as_bytes()),
                    }),
                );
                self.audit.append(&mut batch, event);
                let key = &item.subject.key;
                let sealed = self.subjects.vault().seal(key, id, DEAD_LETTER_FIELD, letter.detail.as_bytes());
                let letter = DeadLetter { detail: sealed, ..letter };
                batch.put_dead_letter(id, serde_json::to_vec(&letter).expect("dead letters serialize"));
            }
            if !self.spool.sinks.is_empty() {
                // Every number, so that one inquiry no sink takes does not break the run in memory.
                committed.push((entry.seq, (!sinks.is_empty()).then_some((id, decision, record))));
            }
        }
        for (sink, group) in self.spool.sinks.iter().zip(&queued) {
            batch.put_outbox(&sink.outbox, group);
        }
        let mut outcomes = Vec::with_capacity(jobs.len());
        // Conversions recorded and inquiries removed by this batch: a second report of one inquiry
        // is kept out, and so is a report of an inquiry removed before it.
        let mut converted: HashMap<Uuid, Vec<u8>> = HashMap::new();
        let mut expired: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
        for (job, job_acks) in jobs.iter().zip(acks) {
            for (item, ack) in job.items().iter().zip(&job_acks).filter(|(_, a)| a.status != AckStatus::Accepted) {
                let event = AuditEvent::new("inquiry.deduplicated", item.actor.as_str())
                    .inquiry(ack.id)
                    .detail(serde_json::json!({ "status": ack.status.as_str(), "channel": item.inquiry.channel }));
                self.audit.append(&mut batch, event);
            }
            outcomes.push(match &job.work {
                Work::Inquiries { cursor, .. } => {
                    if let Some((name, cursor)) = cursor {
                        batch.put_cursor(name, cursor);
                    }
                    Outcome::Acks(job_acks)
                }
                Work::Audit(events) => {
                    for event in events {
                        self.audit.append(&mut batch, event.clone());
                    }
                    Outcome::Audited
                }
                Work::Convert(conversion) if expired.contains(&conversion.inquiry_id) => {
                    Outcome::Converted(ConversionOutcome::Gone)
                }
                Work::Expire(items) => {
                    let mut removed = 0;
                    for (id, pseudonym) in items {
                        // A reach-out state that cannot be read fails this inquiry only (it stays
                        // for the next sweep), not the batch of everyone else's.
                        if let Err(err) = crate::reach::forget(&self.store, &mut batch, *id) {
                            tracing::warn!(error = %err, inquiry_id = %id, "expired inquiry kept for the next sweep");
                            continue;
                        }
                        batch.remove_inquiry(*id, pseudonym);
                        // Its dead letter's class is no longer than the inquiry's: due too (and
                        // one of an inquiry dated in the future is found no other way).
                        batch.remove_dead_letter(*id);
                        expired.insert(*id);
                        removed += 1;
                    }
                    Outcome::Expired(removed)
                }
                Work::Convert(conversion) => {
                    let (store, subjects) = (&self.store, &self.subjects);
                    Outcome::Converted(convert(
                        store,
                        subjects,
                        &mut self.audit,
                        &mut batch,
                        conversion,
                        &mut converted,
                    )?)
                }
                Work::Erase(_) => Outcome::Audited, // never here: an erasure is written alone
            });
        }
        self.audit.sign_if_due(&mut batch, false);
        histogram!(telemetry::STORE_BATCH).record(fresh.len() as f64);
        if !batch.is_empty() {
            batch.write()?;
        }
        if self.written_subjects.len() > 500_000 {
            self.written_subjects.clear();
        }
        for subject in &subjects_written {
            subject.mark_stored();
        }
        self.written_subjects.extend(subjects_written.iter().map(|s| s.index));
        Ok((outcomes, write_started, committed))
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

/// Removes from an erased buyer's inquiry what names their order: `order_id`, the external ids
/// that hold it (they become `erased`), attributes whose text holds it, and the order's and
/// return's names.
fn forget_order(inquiry: &mut Inquiry) {
    let Some(order) = inquiry.order_id.take().filter(|o| !o.is_empty()) else { return };
    // A whole part of the text, not any substring: order `42` is not in `conv-1420`.
    let names_order = |text: &str| text.split([':', '/', '#', ' ']).any(|part| part == order);
    for id in [&mut inquiry.external.conversation_id, &mut inquiry.external.message_id] {
        if names_order(id) {
            *id = ERASED_RAW_REF.to_owned();
        }
    }
    inquiry.attributes.retain(|key, value| {
        let names_it = value.as_str().is_some_and(names_order);
        !names_it && key != "order_name" && key != "return_name"
    });
}

/// Checks a conversion report against what is written so far (`converted`: by this batch)
/// and, when it is the first for a stored inquiry of a buyer not erased, adds the record and
/// its audit entry to `batch`.
fn convert(
    store: &Store,
    subjects: &Subjects,
    audit: &mut AuditLog,
    batch: &mut StoreBatch,
    conversion: &ConversionRecord,
    converted: &mut HashMap<Uuid, Vec<u8>>,
) -> Result<ConversionOutcome, StoreError> {
    let id = conversion.inquiry_id;
    if subjects.is_erased(&conversion.pseudonym) {
        return Ok(ConversionOutcome::Erased);
    }
    let kept = match converted.get(&id) {
        Some(record) => Some(record.clone()),
        None => store.conversion(id)?,
    };
    if let Some(kept) = kept {
        return Ok(ConversionOutcome::Kept(kept));
    }
    if !store.has_inquiry(id)? {
        return Ok(ConversionOutcome::Gone);
    }
    batch.put_conversion(id, &conversion.record);
    audit.append(batch, conversion.event.clone());
    converted.insert(id, conversion.record.clone());
    Ok(ConversionOutcome::Recorded)
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
    /// How often the store gauges are refreshed (also while no batch arrives).
    const GAUGE_INTERVAL: Duration = Duration::from_millis(250);

    fn run(self) {
        let mut gauges_set = Instant::now();
        self.refresh_store_gauges();
        loop {
            match self.written.recv_timeout(Self::GAUGE_INTERVAL) {
                Ok(first) => {
                    let mut batches = vec![first];
                    batches.extend(self.written.try_iter());
                    self.commit(batches);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // After the answers: the gauges wait on the journal lock the stage may hold.
            if gauges_set.elapsed() >= Self::GAUGE_INTERVAL {
                gauges_set = Instant::now();
                self.refresh_store_gauges();
            }
        }
    }

    /// One fsync for `batches`, then their answers.
    fn commit(&self, batches: Vec<Written>) {
        let sync_started = Instant::now();
        let synced = self.store.sync();
        histogram!(telemetry::STORE_COMMIT).record(sync_started.elapsed().as_secs_f64());
        match synced {
            Ok(()) => {
                self.store_ok.store(true, Ordering::Relaxed);
                let audit_end = batches.iter().map(|b| b.audit_end).max().unwrap_or(0);
                let seq_end = batches.iter().map(|b| b.seq_end).max().unwrap_or(0);
                let done = Instant::now();
                let (mut answers, mut leftovers) = (Vec::new(), Vec::new());
                for batch in batches {
                    record_per_channel(
                        Hop::Store,
                        batch.jobs.iter().flat_map(|j| j.items()),
                        done - batch.write_started,
                    );
                    let stored = settle(batch.jobs, batch.outcomes, &mut answers, &mut leftovers);
                    if batch.committed.is_empty() {
                        leftovers.extend(stored);
                    } else {
                        self.spool.recent.push_all(batch.generation, committed_records(batch.committed, stored));
                    }
                }
                // Durable before the answers: an answered caller finds its audit entries, and the
                // forwarders find the new records in memory.
                self.spool.mark_audit_durable(audit_end);
                self.spool.mark_durable(seq_end);
                for (reply, outcome) in answers {
                    let _ = reply.send(Ok(outcome));
                }
                drop(leftovers);
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

    fn refresh_store_gauges(&self) {
        let (journal, write_buffer) = self.store.write_backlog();
        gauge!(telemetry::STORE_JOURNAL_BYTES).set(journal as f64);
        gauge!(telemetry::STORE_WRITE_BUFFER_BYTES).set(write_buffer as f64);
        gauge!(telemetry::STORE_MESSAGE_INDEX).set(self.store.message_index_len() as f64);
    }
}

fn enqueued_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An answer waiting to be sent.
type Answer = (oneshot::Sender<Result<Outcome, StoreError>>, Outcome);

/// Counts and logs the outcomes of a durable batch's jobs and takes them apart: each reply with
/// its outcome goes to `answers`, the duplicates' submissions to `leftovers` (freed after the
/// answers); returns the submissions stored new (accepted), in order.
fn settle(
    jobs: Vec<Job>,
    outcomes: Vec<Outcome>,
    answers: &mut Vec<Answer>,
    leftovers: &mut Vec<Submission>,
) -> Vec<Submission> {
    let mut stored = Vec::new();
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        let Job { work, reply, .. } = job;
        if let (Work::Inquiries { items, .. }, Outcome::Acks(acks)) = (work, &outcome) {
            for (item, ack) in items.into_iter().zip(acks) {
                let channel = item.inquiry.channel.as_str();
                counter!(telemetry::INQUIRIES, "outcome" => ack.status.as_str(), "channel" => channel).increment(1);
                tracing::debug!(trace_id = %item.inquiry.trace_id, inquiry_id = %ack.id, channel,
                    status = ack.status.as_str(), "inquiry durable");
                if ack.status == AckStatus::Accepted {
                    stored.push(item);
                } else {
                    leftovers.push(item);
                }
            }
        }
        answers.push((reply, outcome));
    }
    stored
}

/// The records of a durable batch for the forwarders' memory: each new inquiry moved out of its
/// submission (not copied, not parsed back from its JSON) with its personal data in clear
/// dropped, so that it equals what its JSON reads; the rest of each submission (a few buffers)
/// is freed here. `stored` are the batch's new submissions, in the order of `committed`.
fn committed_records(
    committed: Vec<Committed>,
    stored: Vec<Submission>,
) -> Vec<(u64, Option<Arc<crate::spool::CommittedRecord>>)> {
    let in_step = committed.len() == stored.len()
        && committed
            .iter()
            .zip(&stored)
            .all(|((_, slot), item)| slot.as_ref().is_none_or(|(id, ..)| *id == item.inquiry.id));
    if !in_step {
        // Not expected; nothing is kept and the forwarders read these records from the store.
        tracing::error!(
            records = committed.len(),
            stored = stored.len(),
            "committed records out of step; not kept in memory"
        );
        return Vec::new();
    }
    committed
        .into_iter()
        .zip(stored)
        .map(|((seq, slot), item)| {
            let record = slot.map(|(_, decision, json)| {
                let mut inquiry = item.inquiry;
                inquiry.personal = Default::default();
                Arc::new(crate::spool::CommittedRecord { stored: StoredInquiry { inquiry, decision }, json })
            });
            (seq, record)
        })
        .collect()
}

/// The `normalized` hop of an `inquiry.ingested` audit entry (keys in the order a JSON object
/// of `serde_json` has them, like the rest of the log).
#[derive(Serialize)]
struct NormalizedHop<'a> {
    envelope: u32,
    raw_sha256: Option<String>,
    sealed_sha256: SealedHashes<'a>,
}

/// Sealed field -> SHA-256 (hex) of its sealed value.
struct SealedHashes<'a>(&'a BTreeMap<String, String>);

impl Serialize for SealedHashes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(field, value)| (field, sha256_hex(value.as_bytes()))))
    }
}

/// The audit entry of a new inquiry: every hop up to the embedded store, with hashes of the
/// sealed fields (never the fields). It serializes like an [`AuditEntry`](crate::compliance::audit::AuditEntry)
/// of kind `inquiry.ingested` (same keys, same order), typed because every inquiry writes one.
#[derive(Serialize)]
struct IngestedEntry<'a> {
    index: u64,
    kind: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    actor: &'a str,
    inquiry_id: Uuid,
    subject: &'a str,
    detail: IngestedDetail<'a>,
}

#[derive(Serialize)]
struct IngestedDetail<'a> {
    account: &'a str,
    channel: Channel,
    /// The buyer's consent reported with the message: the tamper-evident record of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    consent: Option<&'a inquiry_connectors::Consent>,
    hops: IngestedHops<'a>,
    region: Region,
    trace_id: &'a str,
}

#[derive(Serialize)]
struct IngestedHops<'a> {
    deduplicated: Deduplicated,
    normalized: &'a RawValue,
    received: Received<'a>,
    routed: Routed<'a>,
    stored: Stored,
}

#[derive(Serialize)]
struct Deduplicated {
    status: &'static str,
}

#[derive(Serialize)]
struct Received<'a> {
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    verified_by: &'a str,
}

#[derive(Serialize)]
struct Routed<'a> {
    by: &'a str,
    disposition: &'a Disposition,
    fallback_reason: &'a Option<String>,
    priority: &'a Priority,
    queue: &'a str,
}

#[derive(Serialize)]
struct Stored {
    queued_for: Vec<&'static str>,
    sink: &'static str,
}

impl<'a> IngestedEntry<'a> {
    fn new(index: u64, item: &'a Submission, decision: &'a Decision, sinks: &[&SpoolSink]) -> Self {
        let inquiry = &item.inquiry;
        IngestedEntry {
            index,
            kind: "inquiry.ingested",
            at: OffsetDateTime::now_utc(),
            actor: &item.actor,
            inquiry_id: inquiry.id,
            subject: &item.subject.key.pseudonym,
            detail: IngestedDetail {
                account: &inquiry.account,
                channel: inquiry.channel,
                consent: inquiry.consent.as_ref(),
                hops: IngestedHops {
                    deduplicated: Deduplicated { status: "new" },
                    normalized: &item.normalized_hop,
                    received: Received { at: inquiry.received_at, verified_by: &item.actor },
                    routed: Routed {
                        by: &decision.decided_by,
                        disposition: &decision.disposition,
                        fallback_reason: &decision.fallback_reason,
                        priority: &decision.priority,
                        queue: &decision.queue,
                    },
                    stored: Stored { queued_for: sinks.iter().map(|s| s.name).collect(), sink: "embedded" },
                },
                region: inquiry.region,
                trace_id: &inquiry.trace_id,
            },
        }
    }
}

/// Answers every job with the store's error: nothing of them is acknowledged.
fn fail_jobs(jobs: Vec<Job>, err: &StoreError) {
    for job in jobs {
        let _ = job.reply.send(Err(err.clone()));
    }
}

/// A client's Idempotency-Key, stored as `(channel, account, key) -> id + SHA-256 of the
/// payload`: a retry with the same payload is a duplicate, the same key with another payload a
/// conflict. (Messages are deduplicated by their id: see [`Store::find_message`].)
struct IdempotencyKey {
    /// `(channel, account, "idempotency", key)`, each part length-prefixed, so no value can
    /// imitate another.
    key: Vec<u8>,
    fingerprint: [u8; 32],
}

impl IdempotencyKey {
    /// The key of a submission, when its client sent one.
    fn of(item: &Submission) -> Option<IdempotencyKey> {
        let key = item.idempotency_key.as_deref()?;
        Some(IdempotencyKey { key: dedup_key(&item.inquiry, "idempotency", key), fingerprint: item.fingerprint })
    }

    /// The value to store for inquiry `id`.
    fn value(&self, id: Uuid) -> Vec<u8> {
        [id.as_bytes().as_slice(), &self.fingerprint].concat()
    }

    /// The answer for a submission whose key is stored with `value`.
    fn ack_for(&self, value: &[u8]) -> Ack {
        let (id, earlier_fingerprint) = value.split_at(16.min(value.len()));
        let status = if earlier_fingerprint == self.fingerprint { AckStatus::Duplicate } else { AckStatus::Conflict };
        Ack { id: Uuid::from_slice(id).unwrap_or_default(), status }
    }
}

/// `(channel, account, kind, value)`, each part length-prefixed.
fn dedup_key(inquiry: &Inquiry, kind: &str, value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(64);
    for part in [inquiry.channel.as_str(), inquiry.account.as_str(), kind, value] {
        key.extend_from_slice(&(part.len() as u32).to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key
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

    use time::format_description::well_known::Rfc3339;

    use super::*;
    use crate::compliance::audit::AuditEvent;
    use crate::config::FallbackConfig;
    use crate::routing::{Disposition, Priority};

    fn submission(subjects: &Subjects, external_id: &str, body: &str) -> Submission {
        submission_at(subjects, external_id, body, "2026-11-24T08:00:00Z")
    }

    fn submission_at(subjects: &Subjects, external_id: &str, body: &str, occurred_at: &str) -> Submission {
        let raw = serde_json::json!({
            "channel": "generic", "account": "shop-1", "external_id": external_id,
            "buyer": { "email": "anna@example.com", "name": "Anna Example" },
            "body": body, "occurred_at": occurred_at,
        });
        submission_of(subjects, raw)
    }

    /// The submission of a generic API body.
    fn submission_of(subjects: &Subjects, raw: serde_json::Value) -> Submission {
        let raw = raw.to_string();
        let ctx =
            NormalizeContext { received_at: OffsetDateTime::now_utc(), trace_id: "4bf92f3577b34da6a3ce929d0e0e4736" };
        let inquiry = generic::normalize(raw.as_bytes(), &ctx).unwrap();
        Submission::seal(inquiry, raw.as_bytes(), true, None, "api_key:test", subjects).unwrap()
    }

    struct Running {
        pipeline: Pipeline,
        store: Store,
        subjects: Arc<Subjects>,
        spool: Arc<Spool>,
        _dir: tempfile::TempDir,
    }

    fn start(router: impl Router, queue_capacity: usize) -> Running {
        start_with_sinks(router, queue_capacity, &[])
    }

    /// With sink outboxes (no forwarder takes from them).
    fn start_with_sinks(
        router: impl Router,
        queue_capacity: usize,
        sinks: &[(&'static str, Vec<inquiry_connectors::Region>, inquiry_connectors::Region)],
    ) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let vault =
            Arc::new(crate::compliance::vault::Vault::new("test", &[9u8; 32], b"index-key-for-pipeline-tests-000"));
        let subjects = Arc::new(Subjects::new(vault, store.clone()));
        let signer =
            crate::compliance::audit::TreeSigner::from_pkcs8(&crate::compliance::audit::TreeSigner::generate_pkcs8())
                .unwrap();
        let audit = AuditLog::open(&store, signer, Duration::from_secs(3600)).unwrap();
        let limits = PipelineLimits { queue_capacity, max_batch_inquiries: 1024 };
        let (spool, next_seq) = Spool::open(&store, sinks, 10).unwrap();
        let spool = Arc::new(spool);
        let parts = StageParts {
            store: store.clone(),
            router: Arc::new(router),
            fallback: FallbackRouter::new(FallbackConfig::default()),
            spool: spool.clone(),
            next_seq,
            audit,
            subjects: subjects.clone(),
        };
        let (pipeline, _thread) = Pipeline::start(parts, limits).unwrap();
        Running { pipeline, store, subjects, spool, _dir: dir }
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
                    if inquiry.personal.body.contains("boom") {
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
        let Running { pipeline, store, subjects, .. } = start(Picky, 8);
        let acks = pipeline
            .submit(vec![submission(&subjects, "a", "hello"), submission(&subjects, "b", "boom")])
            .await
            .unwrap();
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
        // The router's words are sealed for the buyer's subject, like a personal field.
        assert!(!letter.detail.contains("unreachable"), "{}", letter.detail);
        let subject = subjects.by_pseudonym(&failed.inquiry.buyer.pseudonym).unwrap().unwrap();
        let opened = subjects.vault().open(&subject.key, acks[1].id, DEAD_LETTER_FIELD, &letter.detail).unwrap();
        assert_eq!(opened, "unreachable executed");
    }

    #[tokio::test]
    async fn the_ingested_audit_entry_hashes_every_sealed_field_and_the_sealed_payload() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        let acks = pipeline.submit(vec![submission(&subjects, "h", "hash me")]).await.unwrap();
        let inquiry = stored(&store, acks[0].id).inquiry;
        let raw = store.get_raw(acks[0].id).unwrap().unwrap();
        let entries = store.audit_entries(0, store.audit_len().unwrap()).unwrap();
        let (bytes, entry) = entries
            .iter()
            .map(|(_, bytes)| (bytes, serde_json::from_slice::<serde_json::Value>(bytes).unwrap()))
            .find(|(_, e)| e["kind"] == "inquiry.ingested")
            .expect("an ingested entry");
        let normalized = &entry["detail"]["hops"]["normalized"];
        let hex = |bytes: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        assert!(inquiry.sealed.len() >= 2, "name, e-mail and body are sealed");
        for (field, value) in &inquiry.sealed {
            assert_eq!(normalized["sealed_sha256"][field], hex(value.as_bytes()), "{field}");
        }
        assert_eq!(normalized["sealed_sha256"].as_object().unwrap().len(), inquiry.sealed.len());
        assert!(!raw.is_empty());
        assert_eq!(normalized["raw_sha256"], hex(&raw));
        assert_eq!(normalized["envelope"], inquiry.schema_version);
        // The typed entry reads back as any other entry of the log, with every hop.
        let parsed: crate::compliance::audit::AuditEntry = serde_json::from_slice(bytes).unwrap();
        assert_eq!(parsed.event.kind, "inquiry.ingested");
        assert_eq!(parsed.event.inquiry_id, Some(inquiry.id));
        assert_eq!(parsed.event.subject.as_deref(), Some(inquiry.buyer.pseudonym.as_str()));
        let hops = &parsed.event.detail["hops"];
        assert_eq!(hops["received"]["verified_by"], parsed.event.actor.as_str());
        assert_eq!(hops["deduplicated"]["status"], "new");
        assert_eq!(hops["routed"]["by"], "fallback");
        assert_eq!(hops["routed"]["queue"], stored(&store, acks[0].id).decision.queue.as_str());
        assert_eq!(hops["stored"]["sink"], "embedded");
        assert_eq!(parsed.event.detail["trace_id"], inquiry.trace_id.as_str());
        assert_eq!(parsed.event.detail["channel"], "generic");
        // Byte for byte what the generic entry (keys sorted by serde_json) would have been.
        assert_eq!(&serde_json::to_vec(&parsed).unwrap(), bytes);
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
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        let acks =
            pipeline.submit(vec![submission(&subjects, "a", "x"), submission(&subjects, "b", "y")]).await.unwrap();
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
        let Running { pipeline, store, subjects, .. } = start(gate, 1);

        let first = tokio::spawn({
            let pipeline = pipeline.clone();
            let item = submission(&subjects, "a", "x");
            async move { pipeline.submit(vec![item]).await }
        });
        entered.recv().unwrap(); // the stage holds the first batch
        let second = tokio::spawn({
            let pipeline = pipeline.clone();
            let item = submission(&subjects, "b", "x");
            async move { pipeline.submit(vec![item]).await }
        });
        // The second job fills the one-slot queue; the third is refused without waiting.
        while pipeline.tx.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        let third = pipeline.submit(vec![submission(&subjects, "c", "x")]).await;
        assert!(matches!(third, Err(SubmitError::Overloaded)));

        release.send(()).unwrap();
        release.send(()).unwrap();
        let first = first.await.unwrap().unwrap();
        let second = second.await.unwrap().unwrap();
        assert!(store.get_inquiry(first[0].id).unwrap().is_some());
        assert!(store.get_inquiry(second[0].id).unwrap().is_some());
    }

    #[tokio::test]
    async fn inquiries_are_stored_sealed_linked_to_their_subject_and_audited() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        let acks = pipeline.submit(vec![submission(&subjects, "a", "where is my parcel")]).await.unwrap();
        let again = pipeline.submit(vec![submission(&subjects, "a", "where is my parcel")]).await.unwrap();
        assert_eq!(again[0].status, AckStatus::Duplicate);
        let record = String::from_utf8(store.get_inquiry(acks[0].id).unwrap().unwrap()).unwrap();
        let raw = store.get_raw(acks[0].id).unwrap().unwrap();
        for clear in ["parcel", "anna", "Anna"] {
            assert!(!record.contains(clear), "`{clear}` in the stored record");
            assert!(!raw.windows(clear.len()).any(|w| w == clear.as_bytes()), "`{clear}` in the stored payload");
        }
        let inquiry = stored(&store, acks[0].id).inquiry;
        assert_eq!(store.inquiries_of(&inquiry.buyer.pseudonym).unwrap(), vec![acks[0].id]);
        let personal = subjects.open(&inquiry).unwrap().unwrap();
        assert_eq!(
            (personal.body.as_str(), personal.email.as_deref()),
            ("where is my parcel", Some("anna@example.com"))
        );
        let kinds: Vec<String> = store
            .audit_entries(0, 100)
            .unwrap()
            .iter()
            .map(|(_, e)| serde_json::from_slice::<crate::compliance::audit::AuditEntry>(e).unwrap().event.kind)
            .collect();
        assert_eq!(kinds, ["inquiry.ingested", "inquiry.dead_lettered", "inquiry.deduplicated"]);
    }

    #[tokio::test]
    async fn expired_inquiries_leave_the_store_with_their_message_link_and_dead_letter() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        let now = OffsetDateTime::now_utc();
        let recent = (now - time::Duration::days(2)).format(&Rfc3339).unwrap();
        let old = (now - time::Duration::days(45)).format(&Rfc3339).unwrap();
        let acks = pipeline
            .submit(vec![submission_at(&subjects, "old", "x", &old), submission_at(&subjects, "new", "y", &recent)])
            .await
            .unwrap();
        let pseudonym = stored(&store, acks[0].id).inquiry.buyer.pseudonym;
        let retention =
            crate::config::RetentionConfig { inquiries_days: 30, dead_letters_days: 30, ..Default::default() };
        // Received just now: kept a day whatever its message time (it must reach the sinks); its
        // dead letter (a class of its own) goes.
        let swept = crate::retention::sweep(&store, &pipeline, &retention, now).await.unwrap();
        assert_eq!((swept.inquiries, swept.dead_letters), (0, 1));
        assert!(store.get_inquiry(acks[0].id).unwrap().is_some());
        let now = now + crate::retention::KEPT_AFTER_RECEIPT + time::Duration::minutes(1);
        let swept = crate::retention::sweep(&store, &pipeline, &retention, now).await.unwrap();
        assert_eq!((swept.inquiries, swept.dead_letters), (1, 0));
        assert!(
            store.get_inquiry(acks[0].id).unwrap().is_none() && store.get_dead_letter(acks[0].id).unwrap().is_none()
        );
        assert!(
            store.get_inquiry(acks[1].id).unwrap().is_some() && store.get_dead_letter(acks[1].id).unwrap().is_some()
        );
        assert_eq!(store.inquiries_of(&pseudonym).unwrap(), vec![acks[1].id]);
        // Its message went with it: the same message, delivered again, is stored again.
        let again = pipeline.submit(vec![submission_at(&subjects, "old", "x", &old)]).await.unwrap();
        assert_eq!(again[0].status, AckStatus::Accepted);
        let later = now + crate::retention::KEPT_AFTER_RECEIPT;
        assert_eq!(crate::retention::sweep(&store, &pipeline, &retention, later).await.unwrap().inquiries, 1);
    }

    #[tokio::test]
    async fn a_full_subject_cache_keeps_a_buyer_whose_first_inquiry_is_still_queued() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        subjects.limit_cache(4);
        let of = |buyer: &str, external_id: &str| {
            let raw = serde_json::json!({
                "channel": "generic", "account": "shop-1", "external_id": external_id,
                "buyer": { "email": format!("{buyer}@example.com") }, "body": format!("{buyer} writes"),
                "occurred_at": "2026-11-24T08:00:00Z",
            })
            .to_string();
            let ctx = NormalizeContext { received_at: OffsetDateTime::now_utc(), trace_id: "t" };
            let inquiry = generic::normalize(raw.as_bytes(), &ctx).unwrap();
            Submission::seal(inquiry, raw.as_bytes(), true, None, "api_key:test", &subjects).unwrap()
        };
        // Three buyers are stored; Anna's first inquiry is sealed (her subject created) but not
        // written yet when a fifth buyer finds the cache full.
        let others: Vec<Submission> = ["bob", "carl", "dora"].iter().map(|b| of(b, &format!("{b}-1"))).collect();
        pipeline.submit(others).await.unwrap();
        let first = of("anna", "a-1");
        let _ = of("emil", "emil-1");
        let second = of("anna", "a-2");
        assert_eq!(second.subject.key.pseudonym, first.subject.key.pseudonym, "one buyer, one pseudonym");
        let acks = pipeline.submit(vec![first, second]).await.unwrap();
        for ack in &acks {
            let inquiry = stored(&store, ack.id).inquiry;
            assert_eq!(subjects.open(&inquiry).unwrap().unwrap().body, "anna writes", "readable");
        }
        // A cache full of subjects none of which is stored yet keeps them all too.
        let Running { subjects: crowded, .. } = start(Silent, 8);
        crowded.limit_cache(3);
        let seal = |buyer: &str| {
            let raw = serde_json::json!({ "channel": "generic", "account": "shop-1", "external_id": format!("{buyer}-x"),
                "buyer": { "email": format!("{buyer}@example.com") }, "body": "x", "occurred_at": "2026-11-24T08:00:00Z" })
            .to_string();
            let ctx = NormalizeContext { received_at: OffsetDateTime::now_utc(), trace_id: "t" };
            let inquiry = generic::normalize(raw.as_bytes(), &ctx).unwrap();
            Submission::seal(inquiry, raw.as_bytes(), true, None, "api_key:test", &crowded)
                .unwrap()
                .subject
                .key
                .pseudonym
                .clone()
        };
        let first = seal("kim");
        for b in ["lea", "max", "ned", "ola"] {
            seal(b);
        }
        assert_eq!(seal("kim"), first, "never stored yet, never dropped");
        // Written, she may leave the cache: her next inquiry finds her in the store.
        let pseudonym = stored(&store, acks[0].id).inquiry.buyer.pseudonym;
        for b in ["fay", "gus", "hal", "ivy"] {
            let _ = of(b, &format!("{b}-1"));
        }
        assert_eq!(of("anna", "a-3").subject.key.pseudonym, pseudonym);
    }

    #[tokio::test]
    async fn a_message_dated_in_the_future_expires_by_its_receipt_time() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        let now = OffsetDateTime::now_utc();
        // A platform's clock ten years ahead: its id starts with that time, past every cutoff.
        let later = now + time::Duration::days(3650);
        let raw = serde_json::json!({
            "channel": "generic", "account": "shop-1", "external_id": "from-the-future",
            "buyer": { "email": "anna@example.com" }, "body": "x", "occurred_at": later.format(&Rfc3339).unwrap(),
        })
        .to_string();
        let ctx = NormalizeContext { received_at: later, trace_id: "t" };
        let mut inquiry = generic::normalize(raw.as_bytes(), &ctx).unwrap();
        inquiry.received_at = now;
        let item = Submission::seal(inquiry, raw.as_bytes(), true, None, "api_key:test", &subjects).unwrap();
        let acks = pipeline.submit(vec![item]).await.unwrap();
        let retention =
            crate::config::RetentionConfig { inquiries_days: 30, dead_letters_days: 30, ..Default::default() };
        let sweep = |at| crate::retention::sweep(&store, &pipeline, &retention, at);
        assert_eq!(sweep(now + time::Duration::days(2)).await.unwrap().inquiries, 0, "received 2 days ago: kept");
        assert_eq!(sweep(now + time::Duration::days(31)).await.unwrap().inquiries, 1, "received 31 days ago: gone");
        assert!(store.get_inquiry(acks[0].id).unwrap().is_none());
    }

    #[tokio::test]
    async fn an_expired_inquiry_a_sink_has_not_taken_yet_is_kept_until_it_has() {
        use inquiry_connectors::Region;
        let sinks = [("kafka", vec![Region::Eu, Region::Other], Region::Eu)];
        let Running { pipeline, store, subjects, spool, .. } = start_with_sinks(Silent, 8, &sinks);
        let now = OffsetDateTime::now_utc();
        let old = (now - time::Duration::days(45)).format(&Rfc3339).unwrap();
        // A backfill of old messages while Kafka is down: nobody takes them from the outbox.
        let acks = pipeline.submit(vec![submission_at(&subjects, "old", "x", &old)]).await.unwrap();
        let retention =
            crate::config::RetentionConfig { inquiries_days: 30, dead_letters_days: 30, ..Default::default() };
        let later = now + time::Duration::days(3);
        assert_eq!(crate::retention::sweep(&store, &pipeline, &retention, later).await.unwrap().inquiries, 0);
        assert!(store.get_inquiry(acks[0].id).unwrap().is_some(), "removed before Kafka had it");
        // Kafka took it: the next sweep removes it.
        spool.sinks[0].outbox.remove(&store, 0, spool.durable_end()).unwrap();
        assert_eq!(crate::retention::sweep(&store, &pipeline, &retention, later).await.unwrap().inquiries, 1);
        assert!(store.get_inquiry(acks[0].id).unwrap().is_none());
        // A sink that takes nothing for over 7 days holds retention back no more.
        let stuck = pipeline.submit(vec![submission_at(&subjects, "stuck", "y", &old)]).await.unwrap();
        let week_later = now + time::Duration::days(9);
        assert_eq!(crate::retention::sweep(&store, &pipeline, &retention, week_later).await.unwrap().inquiries, 1);
        assert!(store.get_inquiry(stuck[0].id).unwrap().is_none());
    }

    #[tokio::test]
    async fn expired_inquiries_take_their_idempotency_keys_with_them() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        let now = OffsetDateTime::now_utc();
        let old = (now - time::Duration::days(45)).format(&Rfc3339).unwrap();
        let recent = (now - time::Duration::days(2)).format(&Rfc3339).unwrap();
        let keyed = |external_id: &str, at: &str, key: &str| {
            let mut item = submission_at(&subjects, external_id, "x", at);
            item.idempotency_key = Some(key.to_owned());
            item
        };
        let acks = pipeline.submit(vec![keyed("a", &old, "req-1"), keyed("b", &recent, "req-2")]).await.unwrap();
        assert!(acks.iter().all(|a| a.status == AckStatus::Accepted));
        // While stored, the same key with another payload is a conflict.
        let reused = pipeline.submit(vec![keyed("c", &recent, "req-1")]).await.unwrap();
        assert_eq!(reused[0].status, AckStatus::Conflict);
        let retention =
            crate::config::RetentionConfig { inquiries_days: 30, dead_letters_days: 30, ..Default::default() };
        let later = now + crate::retention::KEPT_AFTER_RECEIPT + time::Duration::minutes(1);
        assert_eq!(crate::retention::sweep(&store, &pipeline, &retention, later).await.unwrap().inquiries, 1);
        // The expired inquiry's key is free again; the kept one's still holds.
        let again = pipeline.submit(vec![keyed("c", &recent, "req-1"), keyed("d", &recent, "req-2")]).await.unwrap();
        assert_eq!(again[0].status, AckStatus::Accepted);
        assert_eq!((again[1].id, again[1].status), (acks[1].id, AckStatus::Conflict));
    }

    #[tokio::test]
    async fn a_message_received_again_with_another_time_is_a_duplicate_of_the_first() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        // A platform that sends no message time gets the receive time: another id each time.
        let at = |hour: u32| format!("2026-11-24T{hour:02}:00:00Z");
        let acks = pipeline
            .submit(vec![submission_at(&subjects, "m-1", "x", &at(8)), submission_at(&subjects, "m-1", "x", &at(9))])
            .await
            .unwrap();
        assert_eq!(acks[0].status, AckStatus::Accepted);
        assert_eq!((acks[1].id, acks[1].status), (acks[0].id, AckStatus::Duplicate), "within one batch");
        let later = pipeline.submit(vec![submission_at(&subjects, "m-1", "x", &at(10))]).await.unwrap();
        assert_eq!((later[0].id, later[0].status), (acks[0].id, AckStatus::Duplicate), "in a later batch");
        let other = pipeline.submit(vec![submission_at(&subjects, "m-2", "x", &at(10))]).await.unwrap();
        assert_eq!(other[0].status, AckStatus::Accepted);
        assert_eq!(store.count_inquiries().unwrap(), 2);
    }

    #[tokio::test]
    async fn an_erased_subject_is_unreadable_and_a_new_message_gets_a_new_pseudonym() {
        use inquiry_connectors::Region;
        let sinks = [("kafka", vec![Region::Eu, Region::Other], Region::Eu)];
        let Running { pipeline, store, subjects, spool, .. } = start_with_sinks(Silent, 8, &sinks);
        let first = serde_json::json!({
            "channel": "generic", "account": "shop-1", "external_id": "a", "order_id": "o-8100000000000001",
            "conversation_id": "order:o-8100000000000001", "attributes": { "order_name": "#1042", "ref": "o-8100000000000001", "form": "o-81" },
            "buyer": { "email": "anna@example.com", "name": "Anna Example" },
            "body": "first message", "occurred_at": "2026-11-24T08:00:00Z",
        });
        let acks = pipeline.submit(vec![submission_of(&subjects, first)]).await.unwrap();
        assert_eq!(stored(&store, acks[0].id).inquiry.order_id.as_deref(), Some("o-8100000000000001"));
        let pseudonym = stored(&store, acks[0].id).inquiry.buyer.pseudonym;
        // The forwarders' copy in memory is the record as committed: what its JSON in the store
        // reads (no personal data in clear), with that JSON...
        let committed = spool.recent.get(0).expect("the committed record is kept for the forwarders");
        assert_eq!(committed.stored, stored(&store, acks[0].id));
        assert_eq!(committed.json, store.get_inquiry(acks[0].id).unwrap().unwrap());
        assert!(committed.stored.inquiry.personal.body.is_empty() && !committed.stored.inquiry.sealed.is_empty());
        // A message sealed for the subject while the erasure is under way (it waits in the queue).
        let late = submission(&subjects, "b", "second message");
        let index = store.subject_index(&pseudonym).unwrap().unwrap();
        let event = AuditEvent::new("subject.erased", "test").subject(&pseudonym);
        let erasure = Erasure { pseudonym: pseudonym.clone(), index, record: b"{}".to_vec(), event };
        let letter = |id| serde_json::from_slice::<DeadLetter>(&store.get_dead_letter(id).unwrap().unwrap()).unwrap();
        assert_ne!(letter(acks[0].id).detail, ERASED_DETAIL, "the router's failure is told");
        let erased = pipeline.erase(erasure).await.unwrap();
        assert_eq!(erased, vec![acks[0].id]);
        // The dead letter stays, without the router's words (a plugin's may quote the message).
        let kept = letter(acks[0].id);
        assert_eq!((kept.reason.as_str(), kept.detail.as_str()), ("router_contract", ERASED_DETAIL));
        let first = stored(&store, acks[0].id).inquiry;
        assert!(first.sealed.is_empty() && first.raw_ref == "erased");
        assert_eq!(first.order_id, None, "an order id leads back to the buyer in the shop's system");
        assert!(!serde_json::to_string(&first).unwrap().contains("8100000000000001"), "nowhere else either");
        assert_eq!(first.attributes.get("form").and_then(|v| v.as_str()), Some("o-81"), "a mere substring stays");
        // ...and after the erasure a forwarder must read the rewritten record from the store.
        assert!(spool.recent.get(0).is_none(), "the record as committed outlived the erasure in memory");
        assert!(subjects.open(&first).unwrap().is_none());
        assert!(store.get_raw(acks[0].id).unwrap().unwrap().is_empty());
        assert!(store.subject_index(&pseudonym).unwrap().is_none());

        let late_ack = pipeline.submit(vec![late]).await.unwrap();
        let second = stored(&store, late_ack[0].id).inquiry;
        assert_ne!(second.buyer.pseudonym, pseudonym, "sealed again for a new subject");
        assert_eq!(subjects.open(&second).unwrap().unwrap().body, "second message");
    }

    #[tokio::test]
    async fn a_sink_of_other_regions_counts_only_what_it_takes_in_its_backlog() {
        use inquiry_connectors::Region;
        let sinks = [("all", vec![Region::Eu, Region::Other], Region::Eu), ("us", vec![Region::Other], Region::Other)];
        let Running { pipeline, spool, .. } = start_with_sinks(Silent, 64, &sinks);
        let eu = |id: &str| {
            let mut item = submission(&pipeline.subjects, id, "hallo");
            item.inquiry.region = Region::Eu;
            item.inquiry.buyer.country = Some("DE".to_owned());
            item
        };
        pipeline.submit((0..12).map(|n| eu(&format!("eu-{n}"))).collect()).await.unwrap();
        // The spool holds 12 inquiries, none of them for `us`: its backlog is empty, and twelve
        // is over the limit of ten only for the sink that has them.
        assert_eq!((spool.depth(0), spool.depth(1)), (12, 0));
        assert!(spool.is_full(), "the sink taking them is full");
        spool.sinks[0].outbox.remove(&pipeline.store, 0, spool.durable_end()).unwrap();
        assert_eq!(spool.depth(0), 0);
        assert!(!spool.is_full(), "not full for inquiries of a region the other sink never takes");
    }

    #[tokio::test]
    async fn a_store_poisoned_by_another_writer_makes_the_pipeline_not_alive() {
        let Running { pipeline, store, .. } = start(Silent, 8);
        assert!(pipeline.is_alive());
        // What a reach, compliance or retention write meets after a failed fsync on its thread.
        let refused = store.noting_poison::<()>(Err(fjall::Error::Poisoned));
        assert!(refused.is_err());
        assert!(!pipeline.is_alive() && !pipeline.is_ready(), "healthz and readyz turn 503");
    }

    #[tokio::test]
    async fn an_erasure_carried_out_again_leaves_the_identitys_new_subject_alone() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 8);
        let first = pipeline.submit(vec![submission(&subjects, "a", "first message")]).await.unwrap();
        let pseudonym = stored(&store, first[0].id).inquiry.buyer.pseudonym;
        let index = store.subject_index(&pseudonym).unwrap().unwrap();
        let erasure = || Erasure {
            pseudonym: pseudonym.clone(),
            index,
            record: b"{}".to_vec(),
            event: AuditEvent::new("subject.erased", "test").subject(&pseudonym),
        };
        pipeline.erase(erasure()).await.unwrap();
        // The buyer writes again: a new subject under the same identity.
        let again = pipeline.submit(vec![submission(&subjects, "b", "second message")]).await.unwrap();
        let second = stored(&store, again[0].id).inquiry;
        assert_ne!(second.buyer.pseudonym, pseudonym);
        // The first erasure carried out once more (a retry after a write that failed, a request
        // shared by another replica): the new subject's key stays, its message opens.
        pipeline.erase(erasure()).await.unwrap();
        assert_eq!(subjects.open(&second).unwrap().unwrap().body, "second message");
        assert!(store.subject(&index).unwrap().is_some(), "the identity still has its new subject");
    }

    #[tokio::test]
    async fn conversions_are_recorded_once_and_ordered_with_erasures_by_the_stage() {
        let Running { pipeline, store, subjects, .. } = start(Silent, 64);
        let items = ["first", "second", "third", "fourth"].map(|body| submission(&subjects, body, body));
        let acks = pipeline.submit(items.into()).await.unwrap();
        let (first, second) = (stored(&store, acks[0].id).inquiry, stored(&store, acks[1].id).inquiry);
        let (third, fourth) = (stored(&store, acks[2].id).inquiry, stored(&store, acks[3].id).inquiry);
        let report = |inquiry: &Inquiry, order: &str| ConversionRecord {
            inquiry_id: inquiry.id,
            pseudonym: inquiry.buyer.pseudonym.clone(),
            record: format!("{{\"order_id\":\"{order}\"}}").into_bytes(),
            event: AuditEvent::new("inquiry.converted", "test").inquiry(inquiry.id),
        };
        let converted_entries = |store: &Store| {
            let entries = store.audit_entries(0, store.audit_len().unwrap()).unwrap();
            let entries = entries.iter().map(|(_, bytes)| serde_json::from_slice::<serde_json::Value>(bytes).unwrap());
            entries.filter(|e| e["kind"] == "inquiry.converted").count()
        };

        // Two reports of one inquiry at once: one is recorded and audited, the other finds it.
        let (a, b) = tokio::join!(
            pipeline.record_conversion(report(&first, "o-1")),
            pipeline.record_conversion(report(&first, "o-2"))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let kept = store.conversion(first.id).unwrap().expect("one conversion recorded");
        let mut outcomes = [a, b];
        outcomes.sort_by_key(|o| matches!(o, ConversionOutcome::Kept(_)));
        assert_eq!(outcomes, [ConversionOutcome::Recorded, ConversionOutcome::Kept(kept.clone())]);
        assert_eq!(converted_entries(&store), 1);
        // An inquiry that is not stored.
        let mut unknown = first.clone();
        unknown.id = Uuid::now_v7();
        assert_eq!(pipeline.record_conversion(report(&unknown, "o-3")).await.unwrap(), ConversionOutcome::Gone);
        // Retention removes an inquiry with its conversion, through the same writer: a report
        // after it (or racing it) finds the inquiry gone.
        assert_eq!(pipeline.record_conversion(report(&third, "o-5")).await.unwrap(), ConversionOutcome::Recorded);
        pipeline.remove_expired(vec![(third.id, third.buyer.pseudonym.clone())]).await.unwrap();
        assert_eq!(store.conversion(third.id).unwrap(), None);
        assert!(store.get_inquiry(third.id).unwrap().is_none());
        assert_eq!(pipeline.record_conversion(report(&third, "o-6")).await.unwrap(), ConversionOutcome::Gone);
        assert_eq!(store.conversion(third.id).unwrap(), None);
        // A report and the sweep at the same moment: whichever the stage takes first, no
        // conversion outlives its inquiry.
        let (reported, removed) = tokio::join!(
            pipeline.record_conversion(report(&fourth, "o-7")),
            pipeline.remove_expired(vec![(fourth.id, fourth.buyer.pseudonym.clone())])
        );
        assert!(matches!(reported.unwrap(), ConversionOutcome::Recorded | ConversionOutcome::Gone));
        assert_eq!(removed.unwrap(), 1);
        assert_eq!((store.conversion(fourth.id).unwrap(), store.has_inquiry(fourth.id).unwrap()), (None, false));

        // The erasure removes the conversion recorded before it; a report after it is refused,
        // even one made from the inquiry as read before the erasure.
        let index = store.subject_index(&first.buyer.pseudonym).unwrap().unwrap();
        let event = AuditEvent::new("subject.erased", "test").subject(&first.buyer.pseudonym);
        let erasure = Erasure { pseudonym: first.buyer.pseudonym.clone(), index, record: b"{}".to_vec(), event };
        pipeline.erase(erasure).await.unwrap();
        assert_eq!(store.conversion(first.id).unwrap(), None);
        assert_eq!(pipeline.record_conversion(report(&second, "o-4")).await.unwrap(), ConversionOutcome::Erased);
        assert_eq!(store.conversion(second.id).unwrap(), None);
        assert!((2..=3).contains(&converted_entries(&store)));
    }
}
