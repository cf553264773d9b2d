//! The embedded durable store: fjall (an LSM-tree engine in safe Rust) on local disk.
//!
//! Every group commit is one atomic fjall batch written to the journal ([`StoreBatch::write`])
//! and made durable by one fsync ([`Store::sync`]), so the cost of an fsync is shared by every
//! request in the batch. Keys of the `inquiries` partition are inquiry ids, which start with the message time, so
//! writes arrive in near time order; its values are large, so they live in fjall's value log (key-value separation)
//! and compaction moves only keys.
//!
//! Deduplication by message needs no key of its own: every stored inquiry is in the in-memory
//! [`MessageIndex`], rebuilt from the `inquiries` partition's keys when the store opens.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use fjall::{
    Batch, CompressionType, Config as FjallConfig, Keyspace, KvSeparationOptions, PartitionCreateOptions,
    PartitionHandle, PersistMode,
};
use uuid::Uuid;

/// Partition names; one place for the on-disk layout.
mod partition {
    /// `id -> [u32 BE length of the record][StoredInquiry JSON][original payload bytes]`.
    pub const INQUIRIES: &str = "inquiries";
    /// `Idempotency-Key dedup key -> id + payload fingerprint`, removed by retention with the
    /// inquiry (the id starts with its message time). Message dedup keys are not stored (see
    /// [`super::MessageIndex`]); those of a store written before, `message` kind `-> id`, are
    /// no longer read and leave the same way.
    pub const DEDUP: &str = "dedup";
    /// `id -> dead-letter record` JSON.
    pub const DEAD_LETTERS: &str = "dead_letters";
    /// Store metadata (`pseudonym_key`).
    pub const META: &str = "meta";
    /// `subject index (32 bytes) -> SubjectRecord JSON` (pseudonym and wrapped data key).
    pub const SUBJECTS: &str = "subjects";
    /// `pseudonym -> subject index`.
    pub const PSEUDONYMS: &str = "pseudonyms";
    /// `pseudonym || 0x00 || inquiry id (16 bytes) -> ()`: every inquiry of a data subject.
    pub const SUBJECT_INQUIRIES: &str = "subject_inquiries";
    /// `pseudonym -> erasure JSON`: subjects erased (their pseudonyms are never reused).
    pub const ERASURES: &str = "erasures";
    /// `request id (16 bytes) -> SubjectRequest JSON`.
    pub const SUBJECT_REQUESTS: &str = "subject_requests";
    /// The Merkle leaves' contents, one value per group commit: `last index (u64 BE) -> 0x00,
    /// then each entry as u32 BE length + bytes` (see [`super::AuditGroup`]). A store written
    /// before grouping holds single entries (`index -> entry bytes`, JSON: never a 0x00 first).
    pub const AUDIT: &str = "audit";
    /// `level (u8) || index (u64 BE) -> hash`: the roots of the audit tree's perfect subtrees
    /// from 16 entries up (`compliance::audit::STORED_NODE_LEVEL`; smaller ones are hashed from
    /// the entries).
    pub const AUDIT_NODES: &str = "audit_nodes";
    /// `tree size (u64 BE) -> SignedTreeHead JSON`.
    pub const AUDIT_HEADS: &str = "audit_heads";
    /// `inquiry id (16 bytes) -> SlaState JSON`: first-response SLAs (reach-out).
    pub const SLA_STATES: &str = "sla_states";
    /// `due (i64 BE Unix ms) || inquiry id (16 bytes) -> ()`: the next step of each open SLA.
    pub const SLA_TIMERS: &str = "sla_timers";
    /// `inquiry id (16 bytes) -> AckState JSON`: auto-acknowledgements (reach-out).
    pub const ACK_STATES: &str = "ack_states";
    /// `due (i64 BE Unix ms) || inquiry id (16 bytes) -> ()`: acknowledgements waiting to be sent.
    pub const ACK_TIMERS: &str = "ack_timers";
    /// `queue name || 0x00 || seq (u64 BE) -> event JSON`: reach-out events waiting for delivery
    /// (the Kafka topic, each alert target).
    pub const REACH_QUEUES: &str = "reach_queues";
    /// `inquiry id (16 bytes) -> Conversion JSON`: the order an inquiry led to (removed with
    /// the inquiry).
    pub const CONVERSIONS: &str = "conversions";
}

const META_PSEUDONYM_KEY: &str = "pseudonym_key";

/// A store failure; the caller answers 503 and nothing is acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("embedded store: {0}")]
pub struct StoreError(String);

impl StoreError {
    /// An error with a message of the gateway's own.
    pub fn from_message(message: &str) -> Self {
        StoreError(message.to_owned())
    }
}

/// Runs blocking store work `work` off the async workers; the task's panic becomes an error.
pub async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::from_message(&e.to_string()))?
}

impl From<fjall::Error> for StoreError {
    fn from(err: fjall::Error) -> Self {
        StoreError(err.to_string())
    }
}

/// The embedded store. Cheap to clone: every clone shares one keyspace.
#[derive(Clone)]
pub struct Store {
    keyspace: Keyspace,
    inquiries: PartitionHandle,
    dedup: PartitionHandle,
    dead_letters: PartitionHandle,
    meta: PartitionHandle,
    subjects: PartitionHandle,
    pseudonyms: PartitionHandle,
    subject_inquiries: PartitionHandle,
    erasures: PartitionHandle,
    subject_requests: PartitionHandle,
    audit: PartitionHandle,
    audit_nodes: PartitionHandle,
    audit_heads: PartitionHandle,
    sla_states: PartitionHandle,
    sla_timers: PartitionHandle,
    ack_states: PartitionHandle,
    ack_timers: PartitionHandle,
    reach_queues: PartitionHandle,
    conversions: PartitionHandle,
    messages: Arc<Mutex<MessageIndex>>,
    /// Set once fjall refused a write for good (a failed fsync poisons its keyspace, whichever
    /// thread's write or sync met it): the store needs a restart.
    poisoned: Arc<std::sync::atomic::AtomicBool>,
}

/// Every stored inquiry, found by its message: the last 10 bytes of an inquiry id hash its
/// (channel, account, message id) ([`inquiry_connectors::stable_id`]; its first 6 are the
/// message time), so a message received again, even with another message time, is found by the
/// tail of its new id. Kept in memory instead of a dedup key per inquiry in the LSM tree (a
/// lookup and an insert per inquiry, with their flushes and compactions, ~12 µs of CPU):
/// about 20-40 bytes per stored inquiry, rebuilt from the inquiry keys (no values) when the
/// store opens. [`StoreBatch`] keeps it equal to the `inquiries` partition: it adds what
/// [`StoreBatch::put_inquiry`] wrote and drops what [`StoreBatch::remove_inquiry`] removed once
/// the batch is written. 74 bits of the tail are hash (the rest are the UUID's version and
/// variant): two messages collide with odds of about n²/2⁷⁵ (1 in 40,000 at a billion stored).
#[derive(Debug, Default)]
struct MessageIndex(HashMap<MessageHash, [u8; 6]>);

/// The part of an inquiry id that identifies its message: (channel, account, message id).
pub type MessageHash = [u8; 10];

/// The message hash of inquiry `id` (see [`MessageIndex`]).
pub fn message_hash(id: Uuid) -> MessageHash {
    id.as_bytes()[6..].try_into().expect("a UUID has 16 bytes")
}

impl MessageIndex {
    fn insert(&mut self, id: Uuid) {
        let bytes = id.as_bytes();
        self.0.insert(message_hash(id), bytes[..6].try_into().expect("a UUID has 16 bytes"));
    }

    fn remove(&mut self, id: Uuid) {
        // Only the id stored for that message (never another message time's).
        let message = message_hash(id);
        if self.get(message) == Some(id) {
            self.0.remove(&message);
        }
    }

    fn get(&self, message: MessageHash) -> Option<Uuid> {
        self.0.get(&message).map(|time| {
            let mut bytes = [0u8; 16];
            bytes[..6].copy_from_slice(time);
            bytes[6..].copy_from_slice(&message);
            Uuid::from_bytes(bytes)
        })
    }
}

/// Room for the store's journals (fjall's `max_journaling_size`).
const JOURNAL_ROOM: u64 = 4 << 30;

/// The options every partition is created with (see [`Store::open`]).
fn partition_options() -> PartitionCreateOptions {
    PartitionCreateOptions::default().compression(CompressionType::None)
}

/// The two kinds of per-inquiry timers reach-out keeps: each has its states and its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeline {
    /// First-response SLAs.
    Sla,
    /// Auto-acknowledgements.
    Ack,
}

impl Store {
    /// Opens (or creates) the store in `path`, recovering the journal after a crash.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Journal room: fjall flushes partitions once its journals pass half of this and stalls
        // every write for 500 ms at 90%. It counts every journal file as at least 32 MiB (its
        // preallocation, sparse on disk), and a file lives until every partition written in it
        // has flushed: the records and audit partitions rotate a file every second or so under
        // load while the small ones (dedup keys, subject links, tree nodes, outboxes) keep the
        // old files alive for many seconds. With 1 GiB the count reached 90% within 10-20 s at
        // 10,000 single POSTs/s (one run in three: p99 420 ms instead of ~20 ms) while the
        // files held a fifth of that (58 MB of data for 256 MiB counted, measured). 4 GiB keeps
        // the stall for a flusher that is really behind; a crash replays what the files hold.
        let keyspace = FjallConfig::new(path).max_journaling_size(JOURNAL_ROOM).open()?;
        // No compression: the values are short (ids, hashes, small JSON) or separated, and LZ4
        // on every flush and compaction took ~8% of the gateway's CPU at ingest. (Options apply
        // when a partition is created; an existing store keeps the ones it was made with.)
        let open = |name| keyspace.open_partition(name, partition_options());
        // Records and audit entries are ~1 KiB: kept out of the LSM tree (in its value log),
        // compaction moves only their keys instead of rewriting them level after level.
        let separated =
            || partition_options().with_kv_separation(KvSeparationOptions::default().separation_threshold(256));
        let inquiries = keyspace.open_partition(partition::INQUIRIES, separated())?;
        // Sized once (no rehash, no doubled peak); keys only: the values stay in the value log.
        let mut messages = MessageIndex(HashMap::with_capacity(inquiries.approximate_len()));
        for key in inquiries.keys() {
            if let Ok(id) = Uuid::from_slice(&key?) {
                messages.insert(id);
            }
        }
        Ok(Store {
            inquiries,
            dedup: open(partition::DEDUP)?,
            dead_letters: open(partition::DEAD_LETTERS)?,
            meta: open(partition::META)?,
            subjects: open(partition::SUBJECTS)?,
            pseudonyms: open(partition::PSEUDONYMS)?,
            subject_inquiries: open(partition::SUBJECT_INQUIRIES)?,
            erasures: open(partition::ERASURES)?,
            subject_requests: open(partition::SUBJECT_REQUESTS)?,
            audit: keyspace.open_partition(partition::AUDIT, separated())?,
            audit_nodes: open(partition::AUDIT_NODES)?,
            audit_heads: open(partition::AUDIT_HEADS)?,
            sla_states: open(partition::SLA_STATES)?,
            sla_timers: open(partition::SLA_TIMERS)?,
            ack_states: open(partition::ACK_STATES)?,
            ack_timers: open(partition::ACK_TIMERS)?,
            reach_queues: open(partition::REACH_QUEUES)?,
            conversions: open(partition::CONVERSIONS)?,
            messages: Arc::new(Mutex::new(messages)),
            poisoned: Arc::default(),
            keyspace,
        })
    }

    /// The pseudonym key kept in the store, generated and persisted on first use.
    pub fn pseudonym_key(&self) -> Result<Vec<u8>, StoreError> {
        if let Some(key) = self.meta.get(META_PSEUDONYM_KEY)? {
            return Ok(key.to_vec());
        }
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the operating system provides randomness");
        let mut batch = self.batch();
        batch.inner.insert(&self.meta, META_PSEUDONYM_KEY, key.clone());
        batch.commit()?;
        Ok(key)
    }

    /// The stored inquiry of the same message (channel, account, message id) as inquiry `id`.
    pub fn find_message(&self, id: Uuid) -> Option<Uuid> {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner).get(message_hash(id))
    }

    /// Inquiries in the message index (every stored inquiry).
    pub fn message_index_len(&self) -> usize {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner).0.len()
    }

    /// The value stored under an Idempotency-Key dedup key (an inquiry id followed by the
    /// payload's fingerprint), if any.
    pub fn find_dedup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.dedup.get(key)?.map(|v| v.to_vec()))
    }

    /// Dedup keys (Idempotency-Keys, and message keys of a store written before the message
    /// index) whose inquiry's message time is before `before`, in key order after `after`: at
    /// most `limit`. A value starts with its inquiry's id, and an id with its message time, so
    /// retention removes them with their inquiries without knowing the keys. A full scan of the
    /// partition over a sweep's calls, which only holds keys clients sent.
    pub fn dedup_keys_before(
        &self,
        before: time::OffsetDateTime,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        use std::ops::Bound;
        let cutoff = time_prefix(before);
        let start = after.map_or(Bound::Unbounded, |key| Bound::Excluded(key.to_vec()));
        let mut expired = Vec::new();
        for item in self.dedup.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (key, value) = item?;
            // Not while its inquiry is still stored (kept after its receipt, see retention).
            let inquiry_gone =
                || Uuid::from_slice(&value[..16]).map_or(Ok(true), |id| self.has_inquiry(id).map(|has| !has));
            if value.len() >= 16 && value[..6] < cutoff[..6] && inquiry_gone()? {
                expired.push(key.to_vec());
                if expired.len() == limit {
                    break;
                }
            }
        }
        Ok(expired)
    }

    /// Frees the disk space of removed inquiry records (retention, erasure): value-log files
    /// with no live record left are deleted. Returns the bytes freed. It scans the partition's
    /// keys, so it runs after a retention sweep, not per request.
    ///
    /// Files that are only partly stale are kept: fjall 2's rewriting GC moves the live values'
    /// handles into the memtable without journaling them and deletes the old file at once, so a
    /// crash before the next flush would lose records (a test reproduced it on reopen). Retention
    /// removes by message time and files are written in flush order, so old files empty out whole.
    ///
    /// The scan holds the inquiries partition's memtable for reading: writes can pause while it
    /// runs (a full key scan of that partition).
    pub fn reclaim_space(&self) -> Result<u64, StoreError> {
        use fjall::GarbageCollection as _;
        // Only a value log has files to free (fjall refuses the call on a plain partition).
        if !self.inquiries.is_kv_separated() {
            return Ok(0);
        }
        // The removals durable first: a crash must not bring back records whose files are gone.
        self.sync()?;
        // The audit log is never expired in the embedded store: nothing to free there.
        self.inquiries.gc_scan()?;
        Ok(self.inquiries.gc_drop_stale_segments()?)
    }

    /// Bytes of the journal on disk and bytes held in memtables (for the store gauges).
    /// (`Keyspace::journal_disk_space` is hidden from fjall's documentation: check it on upgrades.)
    pub fn write_backlog(&self) -> (u64, u64) {
        (self.keyspace.journal_disk_space(), self.keyspace.write_buffer_size())
    }

    /// Makes every write so far durable (one fsync of the journal).
    pub fn sync(&self) -> Result<(), StoreError> {
        let synced = self.keyspace.persist(PersistMode::SyncData);
        Ok(self.noting_poison(synced)?)
    }

    /// True once the store refuses writes for good (see [`Store::sync`]): only a restart helps.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `result`, noting a poisoned keyspace (fjall answers every write after a failed fsync so).
    pub(crate) fn noting_poison<T>(&self, result: fjall::Result<T>) -> fjall::Result<T> {
        if matches!(result, Err(fjall::Error::Poisoned)) {
            self.poisoned.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// The stored inquiry record (JSON of `StoredInquiry`), if any.
    pub fn get_inquiry(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inquiries.get(id.as_bytes())?.map(|v| split_frame(&v).0.to_vec()))
    }

    /// The inquiry records whose message time lies in `[from, to]` (ids start with the message
    /// time in milliseconds), oldest first, at most `limit`.
    pub fn inquiries_between(
        &self,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let bound = |at: time::OffsetDateTime, fill: u8| {
            let millis = (at.unix_timestamp_nanos() / 1_000_000).clamp(0, (1 << 48) - 1) as u64;
            let mut key = [fill; 16];
            key[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
            key
        };
        let mut records = Vec::new();
        for item in self.inquiries.range(bound(from, 0)..=bound(to, 0xff)).take(limit) {
            let (_, value) = item?;
            records.push(split_frame(&value).0.to_vec());
        }
        Ok(records)
    }

    /// Up to `limit` inquiries whose message time is before `before` (ids start with it), oldest
    /// first, as `(id, record)`; only those after `after` when given (to page through them).
    pub fn inquiries_before(
        &self,
        before: time::OffsetDateTime,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.as_bytes().to_vec()));
        self.inquiry_records((start, Bound::Excluded(time_prefix(before).to_vec())), limit)
    }

    /// Up to `limit` inquiries whose message time is `from` or later, as [`Store::inquiries_before`].
    pub fn inquiries_from(
        &self,
        from: time::OffsetDateTime,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let start =
            after.map_or(Bound::Included(time_prefix(from).to_vec()), |id| Bound::Excluded(id.as_bytes().to_vec()));
        self.inquiry_records((start, Bound::Unbounded), limit)
    }

    /// Up to `limit` `(id, record)` of the inquiries whose keys are in `range` (records only,
    /// without the original payload).
    fn inquiry_records(
        &self,
        range: (std::ops::Bound<Vec<u8>>, std::ops::Bound<Vec<u8>>),
        limit: usize,
    ) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inquiries.range(range).take(limit) {
            let (key, value) = item?;
            if let Ok(id) = Uuid::from_slice(&key) {
                out.push((id, split_frame(&value).0.to_vec()));
            }
        }
        Ok(out)
    }

    /// Up to `limit` dead letters of inquiries whose message time is before `before`.
    pub fn dead_letters_before(&self, before: time::OffsetDateTime, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let mut out = Vec::new();
        for item in self.dead_letters.range(..time_prefix(before)).take(limit) {
            if let Ok(id) = Uuid::from_slice(&item?.0) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The original payload of an inquiry, if kept.
    pub fn get_raw(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inquiries.get(id.as_bytes())?.map(|v| split_frame(&v).1.to_vec()))
    }

    /// The dead-letter record of an inquiry, if it has one.
    pub fn get_dead_letter(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.dead_letters.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Number of stored inquiries (exact; walks the partition, for tests and tools).
    pub fn count_inquiries(&self) -> Result<usize, StoreError> {
        Ok(self.inquiries.len()?)
    }

    /// The stored record of the data subject with `index`.
    pub fn subject(&self, index: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.subjects.get(index)?.map(|v| v.to_vec()))
    }

    /// The index of the data subject with `pseudonym`, unless erased.
    pub fn subject_index(&self, pseudonym: &str) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.pseudonyms.get(pseudonym)?.and_then(|v| <[u8; 32]>::try_from(&*v).ok()))
    }

    /// Ids of every stored inquiry of the data subject `pseudonym`, oldest first.
    pub fn inquiries_of(&self, pseudonym: &str) -> Result<Vec<Uuid>, StoreError> {
        let mut prefix = pseudonym.as_bytes().to_vec();
        prefix.push(0);
        let mut ids = Vec::new();
        for item in self.subject_inquiries.prefix(&prefix) {
            let (key, _) = item?;
            if let Ok(id) = Uuid::from_slice(&key[prefix.len()..]) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Ids of the data subject `pseudonym`'s latest `limit` stored inquiries, newest first.
    pub fn latest_inquiries_of(&self, pseudonym: &str, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let mut prefix = pseudonym.as_bytes().to_vec();
        prefix.push(0);
        let mut ids = Vec::new();
        for item in self.subject_inquiries.prefix(&prefix).rev().take(limit) {
            let (key, _) = item?;
            if let Ok(id) = Uuid::from_slice(&key[prefix.len()..]) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The erasure record of `pseudonym`, if the subject was erased.
    pub fn erasure(&self, pseudonym: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.erasures.get(pseudonym)?.map(|v| v.to_vec()))
    }

    /// Every erased pseudonym.
    pub fn erased_pseudonyms(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.erasures.keys() {
            out.push(String::from_utf8_lossy(&item?).into_owned());
        }
        Ok(out)
    }

    /// A subject request record.
    pub fn subject_request(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.subject_requests.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Every subject request record (ids are UUIDv7: oldest first).
    pub fn subject_requests(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for item in self.subject_requests.iter() {
            out.push(item?.1.to_vec());
        }
        Ok(out)
    }

    /// Number of audit entries.
    pub fn audit_len(&self) -> Result<u64, StoreError> {
        Ok(self
            .audit
            .last_key_value()?
            .and_then(|(k, _)| <[u8; 8]>::try_from(&*k).ok())
            .map_or(0, |k| u64::from_be_bytes(k) + 1))
    }

    /// Audit entries with `from <= index < to`, in order, as `(index, entry)`.
    pub fn audit_entries(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        // Groups are keyed by their last index: the first one at or after `from` holds it.
        for item in self.audit.range(from.to_be_bytes()..) {
            let (key, value) = item?;
            let Some(entries) = AuditGroup::decode(&key, &value) else { continue };
            if entries.first().is_none_or(|(index, _)| *index >= to) {
                break;
            }
            out.extend(
                entries.into_iter().filter(|(index, _)| (from..to).contains(index)).map(|(i, e)| (i, e.to_vec())),
            );
        }
        Ok(out)
    }

    /// Rewrites audit entry `index` in place, below the log's API: for tests and tools that
    /// play an attacker with disk access.
    #[doc(hidden)]
    pub fn rewrite_audit_entry(&self, index: u64, entry: &[u8]) -> Result<(), StoreError> {
        let Some(item) = self.audit.range(index.to_be_bytes()..).next() else {
            return Err(StoreError::from_message("no such audit entry"));
        };
        let (key, value) = item?;
        let entries = AuditGroup::decode(&key, &value).unwrap_or_default();
        if !entries.iter().any(|(at, _)| *at == index) {
            return Err(StoreError::from_message("no such audit entry"));
        }
        let mut group = AuditGroup::default();
        for (at, bytes) in &entries {
            group.push(*at, if *at == index { entry } else { bytes });
        }
        self.audit.insert(key, group.value)?;
        self.sync()
    }

    /// A stored node of the audit tree.
    pub fn audit_node(&self, level: u32, index: u64) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.audit_nodes.get(audit_node_key(level, index))?.and_then(|v| <[u8; 32]>::try_from(&*v).ok()))
    }

    /// Every signed tree head, by tree size.
    pub fn audit_heads(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for item in self.audit_heads.iter() {
            out.push(item?.1.to_vec());
        }
        Ok(out)
    }

    /// The signed tree head of the largest tree.
    pub fn latest_audit_head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.audit_heads.last_key_value()?.map(|(_, v)| v.to_vec()))
    }

    fn timeline(&self, timeline: Timeline) -> (&PartitionHandle, &PartitionHandle) {
        match timeline {
            Timeline::Sla => (&self.sla_states, &self.sla_timers),
            Timeline::Ack => (&self.ack_states, &self.ack_timers),
        }
    }

    /// An inquiry's state on `timeline` (its SLA, its acknowledgement).
    pub fn timeline_state(&self, timeline: Timeline, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.timeline(timeline).0.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Every state on `timeline` (for recovery at start-up): (inquiry id, state).
    pub fn timeline_states(&self, timeline: Timeline) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
        let mut states = Vec::new();
        for item in self.timeline(timeline).0.iter() {
            let (key, value) = item?;
            if let Ok(id) = Uuid::from_slice(&key) {
                states.push((id, value.to_vec()));
            }
        }
        Ok(states)
    }

    /// Up to `limit` timers of `timeline` due at or before `until_ms`, earliest first: (due ms,
    /// inquiry id).
    pub fn due_timers(&self, timeline: Timeline, until_ms: i64, limit: usize) -> Result<Vec<(i64, Uuid)>, StoreError> {
        let mut due = Vec::new();
        let timers = self.timeline(timeline).1;
        for item in timers.range(..timer_key(until_ms.saturating_add(1), Uuid::nil())).take(limit) {
            let (key, _) = item?;
            if let Some(timer) = parse_timer_key(&key) {
                due.push(timer);
            }
        }
        Ok(due)
    }

    /// When the earliest timer of `timeline` is due (Unix ms), if any.
    pub fn next_due(&self, timeline: Timeline) -> Result<Option<i64>, StoreError> {
        let first = self.timeline(timeline).1.first_key_value()?;
        Ok(first.and_then(|(key, _)| parse_timer_key(&key)).map(|(due, _)| due))
    }

    /// Number of timers of `timeline` (for the gauges; walks the partition).
    pub fn timer_count(&self, timeline: Timeline) -> Result<usize, StoreError> {
        Ok(self.timeline(timeline).1.len()?)
    }

    /// Up to `limit` events of reach-out queue `queue`, in order: (seq, event).
    pub fn queued(&self, queue: &str, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let prefix = reach_queue_prefix(queue);
        let mut items = Vec::new();
        for item in self.reach_queues.prefix(&prefix).take(limit) {
            let (key, value) = item?;
            if let Ok(seq) = <[u8; 8]>::try_from(&key[prefix.len()..]) {
                items.push((u64::from_be_bytes(seq), value.to_vec()));
            }
        }
        Ok(items)
    }

    /// The last sequence number used in reach-out queue `queue`, if any is left.
    pub fn last_queued(&self, queue: &str) -> Result<Option<u64>, StoreError> {
        let prefix = reach_queue_prefix(queue);
        Ok(self
            .reach_queues
            .prefix(&prefix)
            .next_back()
            .transpose()?
            .and_then(|(key, _)| <[u8; 8]>::try_from(&key[prefix.len()..]).ok())
            .map(u64::from_be_bytes))
    }

    /// A poller's durable cursor.
    pub fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        let key = format!("cursor/{name}");
        Ok(self.meta.get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Whether inquiry `id` is stored (its record is not read).
    pub fn has_inquiry(&self, id: Uuid) -> Result<bool, StoreError> {
        Ok(self.inquiries.contains_key(id.as_bytes())?)
    }

    /// The conversion recorded for inquiry `id`, as the caller wrote it.
    pub fn conversion(&self, id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.conversions.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// The run-time state kept for agent `id` (`PUT /v1/agents/{id}`), as the caller wrote it.
    pub fn agent_state(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(format!("agent/{id}"))?.map(|v| v.to_vec()))
    }

    /// Every agent's kept run-time state, by agent id.
    pub fn agent_states(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.meta
            .prefix("agent/")
            .map(|item| {
                let (key, value) = item?;
                let id = String::from_utf8_lossy(&key["agent/".len()..]).into_owned();
                Ok((id, value.to_vec()))
            })
            .collect()
    }

    /// A secret the gateway keeps for itself (sealed by the caller), by name.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(format!("secret/{name}"))?.map(|v| v.to_vec()))
    }

    /// The outbox (spool) of a sink, created on first use.
    pub fn outbox(&self, sink: &str) -> Result<Outbox, StoreError> {
        let name = format!("outbox_{sink}");
        let outbox =
            Outbox { partition: self.keyspace.open_partition(&name, partition_options())?, len: Arc::default() };
        let mut len = 0;
        for group in outbox.groups_from(0) {
            len += group?.1.len() as u64;
        }
        outbox.len.store(len, std::sync::atomic::Ordering::Relaxed);
        Ok(outbox)
    }

    /// A new atomic batch.
    pub fn batch(&self) -> StoreBatch<'_> {
        StoreBatch {
            store: self,
            inner: self.keyspace.batch(),
            audit: AuditGroup::default(),
            indexed: Vec::new(),
            unindexed: Vec::new(),
            outboxed: Vec::new(),
        }
    }
}

/// A sink's outbox, in commit order: one value per group commit, `last seq (u64 BE) -> entries`,
/// each entry `seq (u64 BE) + id (16 bytes) + enqueue time (u64 BE ms)`, ascending. One key per
/// commit rather than per inquiry: every key costs the LSM tree a memtable insert, a flush and
/// compactions, and an outbox key is written once and removed once. Keyed by the last entry, so
/// that the group holding `seq` is the first at or after it (a forward seek, past the removed
/// groups' tombstones rather than through them). A store written before grouping holds single
/// 24-byte values keyed by their seq: they read as one-entry groups.
/// The forwarder removes what the sink has; what remains after a crash is sent again.
#[derive(Clone)]
pub struct Outbox {
    partition: PartitionHandle,
    /// Entries it holds: counted when the store opens, then kept by the batches that add them
    /// and by [`Outbox::remove`]. A sink's backlog is this, not the sequence numbers it has yet
    /// to pass: those include the inquiries of regions it does not take.
    len: Arc<std::sync::atomic::AtomicU64>,
}

/// One queued inquiry of an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Commit-order sequence number, shared by every outbox.
    pub seq: u64,
    /// The inquiry.
    pub id: Uuid,
    /// When it was queued (ms since the Unix epoch).
    pub enqueued_ms: u64,
}

/// Bytes of an entry in a group.
const OUTBOX_ENTRY_BYTES: usize = 32;

/// Most entries in one outbox value (8 KiB): a forwarder's round that ends inside a group writes
/// the rest again, and every read decodes the whole group, so a large NDJSON batch is split.
pub const OUTBOX_GROUP_MAX: usize = 256;

impl OutboxEntry {
    /// One group's value.
    fn encode_group(entries: &[OutboxEntry]) -> Vec<u8> {
        let mut group = Vec::with_capacity(entries.len() * OUTBOX_ENTRY_BYTES);
        for entry in entries {
            group.extend_from_slice(&entry.seq.to_be_bytes());
            group.extend_from_slice(entry.id.as_bytes());
            group.extend_from_slice(&entry.enqueued_ms.to_be_bytes());
        }
        group
    }

    /// The entries of one stored group (or of one pre-grouping entry, keyed by its seq).
    fn decode_group(key: &[u8], value: &[u8]) -> Vec<OutboxEntry> {
        let entry = |seq: u64, rest: &[u8]| OutboxEntry {
            seq,
            id: Uuid::from_slice(&rest[..16]).expect("16 bytes"),
            enqueued_ms: u64::from_be_bytes(rest[16..24].try_into().expect("8 bytes")),
        };
        if value.len() == 24 {
            return <[u8; 8]>::try_from(key).map(|seq| vec![entry(u64::from_be_bytes(seq), value)]).unwrap_or_default();
        }
        if value.is_empty() || value.len() % OUTBOX_ENTRY_BYTES != 0 {
            tracing::error!(bytes = value.len(), "unreadable outbox group; skipped");
            return Vec::new();
        }
        value
            .chunks_exact(OUTBOX_ENTRY_BYTES)
            .map(|chunk| entry(u64::from_be_bytes(chunk[..8].try_into().expect("8 bytes")), &chunk[8..]))
            .collect()
    }
}

impl Outbox {
    /// Entries it holds (written, not yet removed).
    pub fn len(&self) -> u64 {
        self.len.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The groups holding entries with `seq >= from`, in order, with their keys.
    fn groups_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(fjall::Slice, Vec<OutboxEntry>), StoreError>> + '_ {
        self.partition.range(from.to_be_bytes()..).map(|item| {
            let (key, value) = item?;
            let entries = OutboxEntry::decode_group(&key, &value);
            Ok((key, entries))
        })
    }

    /// Up to `limit` entries with `from <= seq < to`, in order.
    pub fn range(&self, from: u64, to: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut entries = Vec::new();
        if from >= to {
            return Ok(entries);
        }
        for group in self.groups_from(from) {
            let (_, group) = group?;
            let Some(first) = group.first() else { continue };
            if first.seq >= to {
                break;
            }
            entries.extend(group.into_iter().filter(|e| (from..to).contains(&e.seq)));
            if entries.len() >= limit {
                entries.truncate(limit);
                break;
            }
        }
        Ok(entries)
    }

    /// When its first entry was queued (ms since the Unix epoch), if it holds any.
    pub fn first_enqueued_ms(&self) -> Result<Option<u64>, StoreError> {
        let first = self.partition.first_key_value()?;
        Ok(first.and_then(|(k, v)| OutboxEntry::decode_group(&k, &v).first().map(|e| e.enqueued_ms)))
    }

    /// Sequence numbers of the first and the last entry, if any.
    pub fn bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let first = self.partition.first_key_value()?;
        let first = first.and_then(|(k, v)| OutboxEntry::decode_group(&k, &v).first().map(|e| e.seq));
        let last = self.partition.last_key_value()?;
        let last = last.and_then(|(k, v)| OutboxEntry::decode_group(&k, &v).last().map(|e| e.seq));
        Ok(first.zip(last))
    }

    /// Removes the entries below `end`, which the sink has (not fsynced: after a crash they are
    /// forwarded again). The scan starts at the group holding `from`: earlier calls removed what
    /// lies before it. A group that `end` cuts through is written again with the rest.
    pub fn remove(&self, store: &Store, from: u64, end: u64) -> Result<(), StoreError> {
        if from >= end {
            return Ok(());
        }
        let mut batch = store.keyspace.batch();
        let mut removed = 0;
        for group in self.groups_from(from) {
            let (key, group) = group?;
            let Some(first) = group.first() else { continue };
            if first.seq >= end {
                break;
            }
            let rest: Vec<OutboxEntry> = group.iter().copied().filter(|e| e.seq >= end).collect();
            removed += (group.len() - rest.len()) as u64;
            if rest.is_empty() {
                batch.remove(&self.partition, key);
            } else {
                batch.insert(&self.partition, key, OutboxEntry::encode_group(&rest));
            }
        }
        batch.commit()?;
        let count = |len: u64| Some(len.saturating_sub(removed));
        let _ =
            self.len.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, count);
        Ok(())
    }
}

/// The smallest inquiry id of message time `at` (ids start with 48 bits of Unix milliseconds).
fn time_prefix(at: time::OffsetDateTime) -> [u8; 16] {
    let millis = (at.unix_timestamp_nanos() / 1_000_000).clamp(0, (1 << 48) - 1) as u64;
    let mut key = [0u8; 16];
    key[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    key
}

/// Timers sort by due time: the due ms with its sign bit flipped (so negative times sort first),
/// then the inquiry id.
fn timer_key(due_ms: i64, id: Uuid) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&((due_ms as u64) ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(id.as_bytes());
    key
}

fn parse_timer_key(key: &[u8]) -> Option<(i64, Uuid)> {
    let due = u64::from_be_bytes(key.get(..8)?.try_into().ok()?) ^ (1 << 63);
    Some((due as i64, Uuid::from_slice(key.get(8..24)?).ok()?))
}

fn reach_queue_prefix(queue: &str) -> Vec<u8> {
    let mut prefix = queue.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

fn audit_node_key(level: u32, index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = level as u8;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Splits an `inquiries` value into (record, raw payload).
fn split_frame(frame: &[u8]) -> (&[u8], &[u8]) {
    let len = frame.get(..4).map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
    let body = frame.get(4..).unwrap_or_default();
    body.split_at(len.min(body.len()))
}

/// Most entries in one audit value: reading one entry (a proof, `audit verify`) reads its group.
pub const AUDIT_GROUP_MAX: usize = 64;

/// The audit entries of one group commit, stored as values of up to [`AUDIT_GROUP_MAX`] entries:
/// every key costs the LSM tree a memtable insert, a flush and compactions, and the log is only
/// ever read in index ranges.
#[derive(Default)]
struct AuditGroup {
    /// Index of the last entry pushed.
    last: Option<u64>,
    /// Entries in `value`.
    count: usize,
    /// `0x00`, then each entry as u32 BE length + bytes.
    value: Vec<u8>,
}

impl AuditGroup {
    /// Appends entry `index` (the next one after the last pushed).
    fn push(&mut self, index: u64, entry: &[u8]) {
        debug_assert!(self.last.is_none_or(|last| last + 1 == index), "audit entries are contiguous");
        if self.value.is_empty() {
            self.value.push(0);
        }
        self.value.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        self.value.extend_from_slice(entry);
        self.last = Some(index);
        self.count += 1;
    }

    /// The stored value and its key (the last index), once the group holds anything; the group is
    /// empty again after (the next entry starts a new value).
    fn take(&mut self) -> Option<([u8; 8], Vec<u8>)> {
        let last = self.last.filter(|_| self.count > 0)?;
        self.count = 0;
        Some((last.to_be_bytes(), std::mem::take(&mut self.value)))
    }

    /// The entries of a stored group as `(index, bytes)`, or the single entry a store written
    /// before grouping kept under its index. `None` for a value that is neither.
    fn decode<'v>(key: &[u8], value: &'v [u8]) -> Option<Vec<(u64, &'v [u8])>> {
        let last = u64::from_be_bytes(key.try_into().ok()?);
        let Some(mut rest) = value.strip_prefix(&[0]) else { return Some(vec![(last, value)]) };
        let mut entries = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            entries.push(rest.get(4..4 + len)?);
            rest = &rest[4 + len..];
        }
        let first = (last + 1).checked_sub(entries.len() as u64)?;
        Some((first..).zip(entries).collect())
    }
}

/// Writes applied together, atomically, with one fsync.
pub struct StoreBatch<'a> {
    store: &'a Store,
    inner: Batch,
    /// The batch's audit entries, added to `inner` as one value when it is written.
    audit: AuditGroup,
    /// Inquiries the [`MessageIndex`] gets once the batch is written.
    indexed: Vec<Uuid>,
    /// Inquiries the [`MessageIndex`] loses once the batch is written.
    unindexed: Vec<Uuid>,
    /// Entries added to outboxes, counted in once the batch is written.
    outboxed: Vec<(Arc<std::sync::atomic::AtomicU64>, u64)>,
}

impl StoreBatch<'_> {
    /// Adds an inquiry record and its original payload, framed as one value.
    pub fn put_inquiry(&mut self, id: Uuid, record: &[u8], raw: &[u8]) {
        let mut frame = Vec::with_capacity(4 + record.len() + raw.len());
        frame.extend_from_slice(&(record.len() as u32).to_be_bytes());
        frame.extend_from_slice(record);
        frame.extend_from_slice(raw);
        self.inner.insert(&self.store.inquiries, id.as_bytes().as_slice(), frame);
        self.indexed.push(id);
    }

    /// Stores an Idempotency-Key dedup entry.
    pub fn put_dedup(&mut self, key: &[u8], value: &[u8]) {
        self.inner.insert(&self.store.dedup, key, value);
    }

    /// Removes an expired dedup entry (see [`Store::dedup_keys_before`]).
    pub fn remove_dedup(&mut self, key: &[u8]) {
        self.inner.remove(&self.store.dedup, key);
    }

    /// Queues a group commit's inquiries in a sink's outbox: one value per [`OUTBOX_GROUP_MAX`]
    /// entries, keyed by its last sequence number (`entries` ascend).
    pub fn put_outbox(&mut self, outbox: &Outbox, entries: &[OutboxEntry]) {
        if !entries.is_empty() {
            self.outboxed.push((outbox.len.clone(), entries.len() as u64));
        }
        for group in entries.chunks(OUTBOX_GROUP_MAX) {
            let last = group.last().expect("chunks are not empty");
            self.inner.insert(&outbox.partition, last.seq.to_be_bytes(), OutboxEntry::encode_group(group));
        }
    }

    /// Stores a data subject: its record under its index, and the pseudonym's way back to it.
    pub fn put_subject(&mut self, index: &[u8; 32], pseudonym: &str, record: &[u8]) {
        self.inner.insert(&self.store.subjects, index.as_slice(), record);
        self.inner.insert(&self.store.pseudonyms, pseudonym, index.as_slice());
    }

    /// Records that inquiry `id` belongs to the data subject `pseudonym`.
    pub fn link_inquiry(&mut self, pseudonym: &str, id: Uuid) {
        let mut key = Vec::with_capacity(pseudonym.len() + 17);
        key.extend_from_slice(pseudonym.as_bytes());
        key.push(0);
        key.extend_from_slice(id.as_bytes());
        self.inner.insert(&self.store.subject_inquiries, key, []);
    }

    /// Erases a data subject: its wrapped key and pseudonym mapping go, the erasure record stays.
    pub fn erase_subject(&mut self, index: Option<&[u8; 32]>, pseudonym: &str, erasure: &[u8]) {
        if let Some(index) = index {
            self.inner.remove(&self.store.subjects, index.as_slice());
        }
        self.inner.remove(&self.store.pseudonyms, pseudonym);
        self.inner.insert(&self.store.erasures, pseudonym, erasure);
    }

    /// Removes an expired inquiry, with its link to its subject (`pseudonym`, empty when its
    /// record was unreadable); its message is no longer a duplicate.
    pub fn remove_inquiry(&mut self, id: Uuid, pseudonym: &str) {
        self.inner.remove(&self.store.inquiries, id.as_bytes().as_slice());
        self.inner.remove(&self.store.conversions, id.as_bytes().as_slice());
        self.unindexed.push(id);
        let mut link = Vec::with_capacity(pseudonym.len() + 17);
        link.extend_from_slice(pseudonym.as_bytes());
        link.push(0);
        link.extend_from_slice(id.as_bytes());
        self.inner.remove(&self.store.subject_inquiries, link);
    }

    /// Removes an expired dead letter.
    pub fn remove_dead_letter(&mut self, id: Uuid) {
        self.inner.remove(&self.store.dead_letters, id.as_bytes().as_slice());
    }

    /// Replaces an inquiry's record and drops its original payload (erasure).
    pub fn replace_inquiry(&mut self, id: Uuid, record: &[u8]) {
        self.put_inquiry(id, record, &[]);
    }

    /// Stores a subject request record.
    pub fn put_subject_request(&mut self, id: Uuid, record: &[u8]) {
        self.inner.insert(&self.store.subject_requests, id.as_bytes().as_slice(), record);
    }

    /// Removes a subject request record (past its retention).
    pub fn remove_subject_request(&mut self, id: Uuid) {
        self.inner.remove(&self.store.subject_requests, id.as_bytes().as_slice());
    }

    /// Appends audit entry `index` (the batch's entries are contiguous; stored as values of up
    /// to [`AUDIT_GROUP_MAX`] entries).
    pub fn put_audit(&mut self, index: u64, entry: &[u8]) {
        self.audit.push(index, entry);
        if self.audit.count == AUDIT_GROUP_MAX {
            self.flush_audit();
        }
    }

    /// Moves the pending audit entries into the batch as one value.
    fn flush_audit(&mut self) {
        if let Some((key, value)) = self.audit.take() {
            self.inner.insert(&self.store.audit, key, value);
        }
    }

    /// Stores a node of the audit tree.
    pub fn put_audit_node(&mut self, level: u32, index: u64, hash: &[u8; 32]) {
        self.inner.insert(&self.store.audit_nodes, audit_node_key(level, index).as_slice(), hash.as_slice());
    }

    /// Stores a signed tree head.
    pub fn put_audit_head(&mut self, size: u64, head: &[u8]) {
        self.inner.insert(&self.store.audit_heads, size.to_be_bytes().as_slice(), head);
    }

    /// Stores an inquiry's state on `timeline`.
    pub fn put_timeline_state(&mut self, timeline: Timeline, id: Uuid, state: &[u8]) {
        self.inner.insert(self.store.timeline(timeline).0, id.as_bytes().as_slice(), state);
    }

    /// Removes an inquiry's state from `timeline` (its timer is removed separately).
    pub fn remove_timeline_state(&mut self, timeline: Timeline, id: Uuid) {
        self.inner.remove(self.store.timeline(timeline).0, id.as_bytes().as_slice());
    }

    /// Sets a timer on `timeline`.
    pub fn put_timer(&mut self, timeline: Timeline, due_ms: i64, id: Uuid) {
        self.inner.insert(self.store.timeline(timeline).1, timer_key(due_ms, id).as_slice(), b"".as_slice());
    }

    /// Removes a timer from `timeline`.
    pub fn remove_timer(&mut self, timeline: Timeline, due_ms: i64, id: Uuid) {
        self.inner.remove(self.store.timeline(timeline).1, timer_key(due_ms, id).as_slice());
    }

    /// Queues an event for reach-out queue `queue` under `seq`.
    pub fn put_queued(&mut self, queue: &str, seq: u64, event: &[u8]) {
        let mut key = reach_queue_prefix(queue);
        key.extend_from_slice(&seq.to_be_bytes());
        self.inner.insert(&self.store.reach_queues, key, event);
    }

    /// Removes a delivered event from reach-out queue `queue`.
    pub fn remove_queued(&mut self, queue: &str, seq: u64) {
        let mut key = reach_queue_prefix(queue);
        key.extend_from_slice(&seq.to_be_bytes());
        self.inner.remove(&self.store.reach_queues, key);
    }

    /// Sets a poller's cursor.
    pub fn put_cursor(&mut self, name: &str, cursor: &str) {
        self.inner.insert(&self.store.meta, format!("cursor/{name}"), cursor.as_bytes());
    }

    /// Sets a secret (sealed by the caller).
    pub fn put_secret(&mut self, name: &str, sealed: &[u8]) {
        self.inner.insert(&self.store.meta, format!("secret/{name}"), sealed);
    }

    /// Records the conversion of inquiry `id`.
    pub fn put_conversion(&mut self, id: Uuid, conversion: &[u8]) {
        self.inner.insert(&self.store.conversions, id.as_bytes().as_slice(), conversion);
    }

    /// Removes the conversion of inquiry `id` (its subject was erased).
    pub fn remove_conversion(&mut self, id: Uuid) {
        self.inner.remove(&self.store.conversions, id.as_bytes().as_slice());
    }

    /// Keeps agent `id`'s run-time state.
    pub fn put_agent_state(&mut self, id: &str, state: &[u8]) {
        self.inner.insert(&self.store.meta, format!("agent/{id}"), state);
    }

    /// Adds a dead-letter record for an inquiry.
    pub fn put_dead_letter(&mut self, id: Uuid, record: Vec<u8>) {
        self.inner.insert(&self.store.dead_letters, id.as_bytes().as_slice(), record);
    }

    /// Number of writes in the batch (pending audit entries count as one).
    pub fn len(&self) -> usize {
        self.inner.len() + usize::from(self.audit.count > 0)
    }

    /// True when the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the batch atomically, visible at once; durable after the next [`Store::sync`].
    pub fn write(mut self) -> Result<(), StoreError> {
        self.flush_audit();
        let written = self.inner.commit();
        self.store.noting_poison(written)?;
        for (len, added) in &self.outboxed {
            len.fetch_add(*added, std::sync::atomic::Ordering::Relaxed);
        }
        if !self.indexed.is_empty() || !self.unindexed.is_empty() {
            let mut messages = self.store.messages.lock().unwrap_or_else(PoisonError::into_inner);
            self.unindexed.iter().for_each(|id| messages.remove(*id));
            self.indexed.iter().for_each(|id| messages.insert(*id));
        }
        Ok(())
    }

    /// Writes the batch and fsyncs it: durable when this returns `Ok`.
    pub fn commit(self) -> Result<(), StoreError> {
        let store = self.store;
        self.write()?;
        store.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_batches_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::now_v7();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = store.batch();
            batch.put_inquiry(id, b"{\"a\":1}", b"raw");
            batch.put_dedup(b"generic\0shop\0m:1", id.as_bytes());
            batch.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_inquiry(id).unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(store.get_raw(id).unwrap().unwrap(), b"raw");
        assert_eq!(store.find_dedup(b"generic\0shop\0m:1").unwrap(), Some(id.as_bytes().to_vec()));
        assert_eq!(store.find_dedup(b"generic\0shop\0m:2").unwrap(), None);
        assert_eq!(store.count_inquiries().unwrap(), 1);
    }

    #[test]
    fn removed_inquiries_give_their_disk_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let record = vec![b'x'; 8 * 1024];
        let ids: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
        // Two value-log files: the older half, then the newer half.
        for half in ids.chunks(1000) {
            for chunk in half.chunks(100) {
                let mut batch = store.batch();
                chunk.iter().for_each(|id| batch.put_inquiry(*id, &record, b""));
                batch.commit().unwrap();
            }
            store.inquiries.rotate_memtable_and_wait().unwrap();
        }
        let full = store.inquiries.disk_space();
        assert!(full > 2000 * 8 * 1024, "the records are on disk: {full}");
        // Retention removes the older half and a few of the newer ones.
        let expired = |n: usize| n < 1000 || n % 10 == 0;
        let mut batch = store.batch();
        ids.iter().enumerate().filter(|(n, _)| expired(*n)).for_each(|(_, id)| batch.remove_inquiry(*id, ""));
        batch.commit().unwrap();
        store.inquiries.rotate_memtable_and_wait().unwrap();
        let freed = store.reclaim_space().unwrap();
        let after = store.inquiries.disk_space();
        assert!(freed >= 1000 * 8 * 1024 && after < full * 6 / 10, "freed {freed}: {full} -> {after} bytes");
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(store.get_inquiry(*id).unwrap().is_some(), !expired(n), "record {n}");
        }
        // Nothing live was moved or lost: all there after a restart.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.count_inquiries().unwrap(), 900);
        assert_eq!(store.get_inquiry(ids[1999]).unwrap().unwrap(), record);
    }

    #[test]
    fn an_unreadable_record_is_removed_and_its_message_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (kept, unreadable) = (Uuid::now_v7(), Uuid::now_v7());
        let mut batch = store.batch();
        batch.put_inquiry(kept, b"{}", b"");
        batch.put_inquiry(unreadable, b"not json", b"");
        batch.commit().unwrap();
        // Retention knows no subject of a record it cannot read; its message goes by its id.
        let mut batch = store.batch();
        batch.remove_inquiry(unreadable, "");
        batch.commit().unwrap();
        assert!(store.get_inquiry(unreadable).unwrap().is_none() && store.find_message(unreadable).is_none());
        assert!(store.get_inquiry(kept).unwrap().is_some() && store.find_message(kept) == Some(kept));
    }

    #[test]
    fn expired_dedup_keys_are_found_by_the_message_time_of_their_inquiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = |days: i64| time::OffsetDateTime::from_unix_timestamp(1_790_000_000 + days * 86_400).unwrap();
        let id_at = |days: i64, n: u128| {
            let mut bytes = time_prefix(at(days));
            bytes[6..].copy_from_slice(&Uuid::from_u128(n).as_bytes()[6..]);
            Uuid::from_bytes(bytes)
        };
        let mut batch = store.batch();
        for n in 0..25u128 {
            // Idempotency-Keys (id + fingerprint): 20 old, 5 new; a legacy message key (id only).
            let key = format!("idempotency-{n:02}");
            let value = [id_at(if n < 20 { 0 } else { 10 }, n).as_bytes().as_slice(), &[7u8; 32]].concat();
            batch.put_dedup(key.as_bytes(), &value);
        }
        batch.put_dedup(b"message-legacy", id_at(0, 99).as_bytes());
        batch.commit().unwrap();
        let cutoff = at(5);
        // In chunks, each resuming after the last key of the one before.
        let first = store.dedup_keys_before(cutoff, None, 15).unwrap();
        let rest = store.dedup_keys_before(cutoff, first.last().map(Vec::as_slice), 15).unwrap();
        assert_eq!((first.len(), rest.len()), (15, 6));
        let mut batch = store.batch();
        first.iter().chain(&rest).for_each(|key| batch.remove_dedup(key));
        batch.commit().unwrap();
        assert!(store.dedup_keys_before(cutoff, None, 100).unwrap().is_empty());
        assert!(store.find_dedup(b"message-legacy").unwrap().is_none());
        assert!(store.find_dedup(b"idempotency-19").unwrap().is_none());
        assert!(store.find_dedup(b"idempotency-20").unwrap().is_some());
    }

    #[test]
    fn the_message_index_follows_written_batches_removals_and_restarts() {
        use inquiry_connectors::{stable_id, Channel};
        let dir = tempfile::tempdir().unwrap();
        let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(1_790_000_000 + secs).unwrap();
        let message = |id: &str, secs: i64| stable_id(Channel::Generic, "shop-1", id, at(secs));
        let (first, other, unwritten) = (message("m-1", 0), message("m-2", 0), message("m-3", 0));
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = store.batch();
            batch.put_inquiry(first, b"{}", b"");
            batch.put_inquiry(other, b"{}", b"");
            batch.commit().unwrap();
            // A batch never written leaves nothing behind.
            store.batch().put_inquiry(unwritten, b"{}", b"");
            // The same message with another message time is found by its new id; another
            // account's message with the same id is not.
            assert_eq!(store.find_message(message("m-1", 3600)), Some(first));
            assert_eq!(store.find_message(stable_id(Channel::Generic, "shop-2", "m-1", at(0))), None);
            assert_eq!(store.find_message(unwritten), None);
            let mut batch = store.batch();
            batch.remove_inquiry(other, "");
            // Removing another message time's id of a stored message keeps the stored one.
            batch.remove_inquiry(message("m-1", 3600), "");
            batch.commit().unwrap();
            assert_eq!(store.find_message(other), None);
        }
        // Rebuilt from the stored inquiries when the store opens.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.find_message(message("m-1", 60)), Some(first));
        assert_eq!((store.find_message(other), store.find_message(unwritten)), (None, None));
    }

    #[test]
    fn outbox_groups_read_and_remove_by_sequence_number_across_groups_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |seq: u64| OutboxEntry { seq, id: Uuid::from_u128(seq as u128 + 1000), enqueued_ms: seq * 10 };
        let seqs = |entries: Vec<OutboxEntry>| entries.iter().map(|e| e.seq).collect::<Vec<_>>();
        {
            let store = Store::open(dir.path()).unwrap();
            let outbox = store.outbox("test").unwrap();
            assert_eq!(outbox.bounds().unwrap(), None);
            // A pre-grouping entry (one 24-byte value under its seq), then three group commits;
            // seq 6 went to another sink (a region this one does not take).
            let mut legacy = entry(0).id.as_bytes().to_vec();
            legacy.extend_from_slice(&0u64.to_be_bytes());
            outbox.partition.insert(0u64.to_be_bytes(), legacy).unwrap();
            for group in [vec![1, 2, 3], vec![4, 5, 7], vec![8]] {
                let mut batch = store.batch();
                batch.put_outbox(&outbox, &group.into_iter().map(entry).collect::<Vec<_>>());
                batch.put_outbox(&outbox, &[]);
                batch.commit().unwrap();
            }
            assert_eq!(outbox.bounds().unwrap(), Some((0, 8)));
            assert_eq!(outbox.range(0, 100, 100).unwrap(), [0, 1, 2, 3, 4, 5, 7, 8].map(entry));
            // The legacy entry went in behind the count's back; the batches' seven are counted.
            assert_eq!(outbox.len(), 7);
            assert_eq!(seqs(outbox.range(2, 8, 100).unwrap()), [2, 3, 4, 5, 7]);
            assert_eq!(seqs(outbox.range(2, 100, 3).unwrap()), [2, 3, 4]);
            assert_eq!(seqs(outbox.range(6, 7, 100).unwrap()), Vec::<u64>::new());
            assert_eq!(seqs(outbox.range(5, 5, 100).unwrap()), Vec::<u64>::new());
            // A sink took 0..5: the legacy entry and the first group go, the second is cut.
            outbox.remove(&store, 0, 5).unwrap();
            assert_eq!(seqs(outbox.range(0, 100, 100).unwrap()), [5, 7, 8]);
            assert_eq!(outbox.bounds().unwrap(), Some((5, 8)));
            assert_eq!(outbox.len(), 2, "seven counted, five removed (the legacy one among them)");
            store.sync().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let outbox = store.outbox("test").unwrap();
        assert_eq!(outbox.range(0, 100, 100).unwrap(), [5, 7, 8].map(entry));
        assert_eq!(outbox.len(), 3, "counted from the store when it opens");
        outbox.remove(&store, 5, 9).unwrap();
        assert_eq!(outbox.bounds().unwrap(), None);
        assert!(outbox.is_empty());
        // A large batch is stored as values of at most OUTBOX_GROUP_MAX entries; an unreadable
        // value is skipped, not taken for the end of the outbox.
        let mut batch = store.batch();
        batch.put_outbox(&outbox, &(10..610).map(entry).collect::<Vec<_>>());
        batch.commit().unwrap();
        assert_eq!(outbox.partition.len().unwrap(), 600usize.div_ceil(OUTBOX_GROUP_MAX));
        outbox.partition.insert(700u64.to_be_bytes(), b"garbage".as_slice()).unwrap();
        let mut batch = store.batch();
        batch.put_outbox(&outbox, &[entry(800)]);
        batch.commit().unwrap();
        assert_eq!(
            seqs(outbox.range(600, 1000, 100).unwrap()),
            [600, 601, 602, 603, 604, 605, 606, 607, 608, 609, 800]
        );
        assert_eq!(outbox.range(10, 610, 1000).unwrap().len(), 600);
        outbox.remove(&store, 10, 801).unwrap();
        assert_eq!(seqs(outbox.range(0, 1000, 100).unwrap()), Vec::<u64>::new());
    }

    #[test]
    fn audit_entries_are_read_by_index_across_groups_old_single_entries_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |index: u64| format!("{{\"index\":{index}}}").into_bytes();
        let expected = |from: u64, to: u64| (from..to).map(|i| (i, entry(i))).collect::<Vec<_>>();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.audit_len().unwrap(), 0);
            // Two entries as a store written before grouping holds them, then three group commits.
            for index in 0..2u64 {
                store.audit.insert(index.to_be_bytes(), entry(index)).unwrap();
            }
            for group in [2..3, 3..7, 7..12] {
                let mut batch = store.batch();
                group.for_each(|index| batch.put_audit(index, &entry(index)));
                assert_eq!(batch.len(), 1, "one value per batch");
                batch.commit().unwrap();
            }
            assert_eq!(store.audit_len().unwrap(), 12);
            assert_eq!(store.audit_entries(0, 12).unwrap(), expected(0, 12));
            assert_eq!(store.audit.len().unwrap(), 5, "two old entries and three groups");
            for (from, to) in [(1, 3), (4, 5), (5, 9), (6, 7), (11, 40), (12, 13), (3, 3)] {
                assert_eq!(store.audit_entries(from, to).unwrap(), expected(from, to.min(12)), "{from}..{to}");
            }
            store.rewrite_audit_entry(5, b"changed").unwrap();
            store.rewrite_audit_entry(0, b"changed too").unwrap();
            assert!(store.rewrite_audit_entry(12, b"beyond the log").is_err());
            // An unreadable value is refused, not rewritten as an empty group.
            let group = store.audit.get(11u64.to_be_bytes()).unwrap().unwrap();
            store.audit.insert(11u64.to_be_bytes(), [0u8, 0, 0, 0, 9, b'x'].as_slice()).unwrap();
            assert!(store.rewrite_audit_entry(11, b"over a broken value").is_err());
            store.audit.insert(11u64.to_be_bytes(), group).unwrap();
            // A large batch is stored as values of at most AUDIT_GROUP_MAX entries.
            let mut batch = store.batch();
            (12..162).for_each(|index| batch.put_audit(index, &entry(index)));
            batch.commit().unwrap();
            assert_eq!(store.audit.len().unwrap(), 5 + 150usize.div_ceil(AUDIT_GROUP_MAX));
        }
        let store = Store::open(dir.path()).unwrap();
        let mut changed = expected(0, 162);
        changed[5].1 = b"changed".to_vec();
        changed[0].1 = b"changed too".to_vec();
        assert_eq!(store.audit_entries(0, 162).unwrap(), changed);
        assert_eq!(store.audit_entries(70, 80).unwrap(), expected(70, 80));
        assert_eq!(store.audit_len().unwrap(), 162);
    }

    #[test]
    fn pseudonym_key_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap().pseudonym_key().unwrap();
        let second = Store::open(dir.path()).unwrap().pseudonym_key().unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(first, second);
    }
}
