//! Data subjects: who an inquiry's personal data belongs to, their pseudonym and data key.
//!
//! A buyer identity (`email:...`, `id:...`) maps through the keyed index to a subject record: a
//! random pseudonym and the subject's data key, wrapped by the KEK. Sealing happens where the
//! inquiry is normalized (on the request's worker); the pipeline stores new subjects in the same
//! atomic batch as their first inquiry.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use dashmap::DashMap;
use inquiry_connectors::{Inquiry, Personal};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::vault::{DataKey, Vault};
use crate::store::{Store, StoreError};

/// Most subjects kept unwrapped in memory; the cache starts over beyond it, keeping the subjects
/// not stored yet.
const CACHE_LIMIT: usize = 200_000;

/// How long a subject created for an inquiry that was never written (its request refused, its
/// batch failed) is kept for the buyer's next inquiry: far longer than anything waits in the queue.
const UNSTORED_KEPT: std::time::Duration = std::time::Duration::from_secs(600);

/// Field name of the sealed original payload.
pub const RAW_FIELD: &str = "raw";

/// A data subject as stored (`subjects` partition).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectRecord {
    /// Random pseudonym.
    pub pseudonym: String,
    /// The data key, wrapped by the KEK (base64).
    pub wrapped_key: String,
    /// When the subject was first seen.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A data subject with its unwrapped key.
pub struct Subject {
    /// Keyed index of the identity.
    pub index: [u8; 32],
    /// The data key and pseudonym.
    pub key: DataKey,
    /// The stored record (JSON), written with the subject's first inquiry.
    pub record: Vec<u8>,
    /// True once the record is in the store. Until then the cache is the only place that knows
    /// the subject: were it dropped, the buyer's next inquiry would get a second pseudonym for
    /// the same identity while the first still waits in the queue.
    stored: std::sync::atomic::AtomicBool,
    /// When it was created or loaded.
    since: std::time::Instant,
}

impl Subject {
    fn new(index: [u8; 32], key: DataKey, record: Vec<u8>, stored: bool) -> Subject {
        Subject { index, key, record, stored: stored.into(), since: std::time::Instant::now() }
    }

    /// Notes that the record is written (the pipeline's stage, once the batch holding it is).
    pub fn mark_stored(&self) {
        self.stored.store(true, std::sync::atomic::Ordering::Release);
    }

    /// True while the cache must keep it: not stored, and recent enough that an inquiry sealed
    /// for it may still be queued.
    fn pending(&self) -> bool {
        !self.stored.load(std::sync::atomic::Ordering::Acquire) && self.since.elapsed() < UNSTORED_KEPT
    }
}

/// An inquiry sealed for its data subject.
pub struct Sealed {
    /// The subject.
    pub subject: Arc<Subject>,
    /// The original payload sealed for the subject (empty when not kept).
    pub raw: Vec<u8>,
}

/// The registry of data subjects: resolves identities, seals and opens personal data.
pub struct Subjects {
    vault: Arc<Vault>,
    store: Store,
    cache: DashMap<[u8; 32], Arc<Subject>>,
    /// [`CACHE_LIMIT`], smaller in tests.
    cache_limit: std::sync::atomic::AtomicUsize,
    /// The size at which the cache is swept next (at least the limit).
    next_retain: std::sync::atomic::AtomicUsize,
    /// Pseudonyms being or already erased: never handed out again, even from a record read
    /// just before the erasure was written.
    erased: DashMap<String, ()>,
}

impl Subjects {
    /// A registry over `store`, sealing with `vault`.
    pub fn new(vault: Arc<Vault>, store: Store) -> Subjects {
        Subjects {
            vault,
            store,
            cache: DashMap::new(),
            cache_limit: CACHE_LIMIT.into(),
            next_retain: CACHE_LIMIT.into(),
            erased: DashMap::new(),
        }
    }

    /// Keeps at most `limit` subjects in memory (tests: a full cache without 200,000 subjects).
    #[cfg(test)]
    pub(crate) fn limit_cache(&self, limit: usize) {
        self.cache_limit.store(limit, std::sync::atomic::Ordering::Relaxed);
        self.next_retain.store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    /// The vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The index of a buyer identity: e-mail addresses are one subject across the tenant; platform
    /// ids are scoped by channel and account (a Messenger id means nothing on LINE).
    pub fn index_of(&self, channel: &str, account: &str, identity: &str) -> [u8; 32] {
        if identity.starts_with("email:") {
            self.vault.index("", identity)
        } else {
            self.vault.index(&format!("{channel}/{account}"), identity)
        }
    }

    /// The subject of an identity, created if unknown (the pipeline stores it with its first
    /// inquiry written).
    pub fn resolve(&self, index: [u8; 32]) -> Result<Arc<Subject>, StoreError> {
        if let Some(subject) = self.cache.get(&index).map(|s| s.clone()) {
            if !self.erased.contains_key(&subject.key.pseudonym) {
                return Ok(subject);
            }
            // Only the erased one: another thread may have put the identity's new subject there
            // meanwhile, and dropping it would give the buyer a second new pseudonym.
            self.cache.remove_if(&index, |_, cached| Arc::ptr_eq(cached, &subject));
        }
        let limit = self.cache_limit.load(std::sync::atomic::Ordering::Relaxed);
        let next_retain = self.next_retain.load(std::sync::atomic::Ordering::Relaxed);
        if self.cache.len() >= next_retain {
            self.cache.retain(|_, subject| subject.pending());
            // Subjects not stored yet are never dropped (a second pseudonym for their buyer would
            // follow). When many are left (a flood of refused first inquiries), the next sweep
            // waits until the cache has doubled, so it does not run on every miss; they leave
            // once UNSTORED_KEPT is over.
            let left = self.cache.len();
            if left >= limit / 2 {
                tracing::warn!(pending = left, "subject cache holds many subjects never stored");
            }
            self.next_retain.store((2 * left).max(limit), std::sync::atomic::Ordering::Relaxed);
        }
        // The entry lock makes concurrent first inquiries of one buyer agree on one subject.
        match self.cache.entry(index) {
            dashmap::Entry::Occupied(entry) => Ok(entry.get().clone()),
            dashmap::Entry::Vacant(entry) => {
                let loaded = self.load(&index)?.filter(|s| !self.erased.contains_key(&s.key.pseudonym));
                let subject = match loaded {
                    Some(subject) => subject,
                    None => {
                        let (key, wrapped) = self.vault.new_subject();
                        let record = SubjectRecord {
                            pseudonym: key.pseudonym.clone(),
                            wrapped_key: BASE64.encode(wrapped),
                            created_at: OffsetDateTime::now_utc(),
                        };
                        let record = serde_json::to_vec(&record).expect("subject records serialize");
                        Subject::new(index, key, record, false)
                    }
                };
                let subject = Arc::new(subject);
                entry.insert(subject.clone());
                Ok(subject)
            }
        }
    }

    /// Reads and unwraps a stored subject.
    fn load(&self, index: &[u8; 32]) -> Result<Option<Subject>, StoreError> {
        let Some(bytes) = self.store.subject(index)? else { return Ok(None) };
        let record: SubjectRecord =
            serde_json::from_slice(&bytes).map_err(|_| StoreError::from_message("a subject record is unreadable"))?;
        let wrapped = BASE64.decode(&record.wrapped_key).map_err(|_| StoreError::from_message("bad wrapped key"))?;
        let key = self.vault.unwrap_key(&record.pseudonym, &wrapped).map_err(|_| {
            StoreError::from_message("a data key does not unwrap: is compliance.kek the key it was wrapped with?")
        })?;
        Ok(Some(Subject::new(*index, key, bytes, true)))
    }

    /// The subject with `pseudonym`, if it exists (not erased).
    pub fn by_pseudonym(&self, pseudonym: &str) -> Result<Option<Arc<Subject>>, StoreError> {
        let Some(index) = self.store.subject_index(pseudonym)? else { return Ok(None) };
        if let Some(subject) = self.cache.get(&index) {
            return Ok(Some(subject.clone()));
        }
        Ok(self.load(&index)?.map(Arc::new))
    }

    /// Marks a subject erased before its erasure is written: from now on its pseudonym is never
    /// handed out again (a buyer writing again gets a new subject).
    pub fn mark_erased(&self, index: &[u8; 32], pseudonym: &str) {
        self.erased.insert(pseudonym.to_owned(), ());
        // Only the erased subject: the identity may have a new one by now (an erasure carried out
        // again), which must stay.
        self.cache.remove_if(index, |_, cached| cached.key.pseudonym == pseudonym);
    }

    /// Loads the erased pseudonyms at start-up.
    pub fn load_erased(&self, pseudonyms: impl IntoIterator<Item = String>) {
        for pseudonym in pseudonyms {
            self.erased.insert(pseudonym, ());
        }
    }

    /// True when `pseudonym` was erased.
    pub fn is_erased(&self, pseudonym: &str) -> bool {
        self.erased.contains_key(pseudonym)
    }

    /// Assigns the inquiry's pseudonym and seals its personal data and `raw` payload; the clear
    /// personal data stays in [`Inquiry::personal`] for routing.
    pub fn seal(&self, inquiry: &mut Inquiry, raw: Option<&[u8]>) -> Result<Sealed, StoreError> {
        let index = self.index_of(inquiry.channel.as_str(), &inquiry.account, &inquiry.personal.identity);
        let subject = self.resolve(index)?;
        let key = &subject.key;
        inquiry.buyer.pseudonym = key.pseudonym.clone();
        if inquiry.personal.conversation_is_buyer {
            inquiry.external.conversation_id = key.pseudonym.clone();
        }
        inquiry.sealed = inquiry
            .personal
            .fields()
            .into_iter()
            .map(|(field, value)| (field.to_owned(), self.vault.seal(key, inquiry.id, field, value.as_bytes())))
            .collect();
        let raw = match raw {
            Some(raw) => self.vault.seal_bytes(key, inquiry.id, RAW_FIELD, raw),
            None => {
                inquiry.raw_ref = "none".to_owned();
                Vec::new()
            }
        };
        Ok(Sealed { subject, raw })
    }

    /// Opens an inquiry's sealed personal data; `None` when its subject was erased.
    pub fn open(&self, inquiry: &Inquiry) -> Result<Option<Personal>, StoreError> {
        let Some(subject) = self.by_pseudonym(&inquiry.buyer.pseudonym)? else { return Ok(None) };
        let mut personal = Personal::default();
        for (field, sealed) in &inquiry.sealed {
            // A field that does not open is reported as absent, never as someone else's data.
            if let Ok(value) = self.vault.open(&subject.key, inquiry.id, field, sealed) {
                personal.set(field, value);
            }
        }
        Ok(Some(personal))
    }

    /// Opens a sealed original payload; `None` when erased or not kept.
    pub fn open_raw(&self, inquiry: &Inquiry, sealed: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if sealed.is_empty() {
            return Ok(None);
        }
        let Some(subject) = self.by_pseudonym(&inquiry.buyer.pseudonym)? else { return Ok(None) };
        Ok(self.vault.open_bytes(&subject.key, inquiry.id, RAW_FIELD, sealed).ok())
    }
}
