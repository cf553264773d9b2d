//! The audit trail: an append-only RFC 9162 Merkle log in the embedded store, with Ed25519-signed
//! tree heads that an outside witness can keep and check.
//!
//! The pipeline's stage thread is the only writer: it appends the events of each batch in the
//! same atomic write as the data they describe, and signs a tree head every `tree_head_interval_ms`.
//! Entries hold pseudonyms, ids and hashes of ciphertext, never personal data.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::merkle::{self, Frontier, Hash, PerfectNodes};
use crate::store::{Store, StoreBatch, StoreError};

/// One audited fact: what happened, to what, by whom, from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// What happened (`inquiry.ingested`, `sink.persisted`, `admin.call`, `subject.erased`...;
    /// the list is in docs/compliance.md).
    pub kind: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who: `api_key:<id>`, `webhook:<connector>/<account>`, `poller:<connector>/<account>`,
    /// `admin:<token id>`, `gateway`.
    pub actor: String,
    /// From where (the peer address of the request), when a request caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The inquiry concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inquiry_id: Option<Uuid>,
    /// The data subject concerned (pseudonym).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Details (ids, reasons, hashes; no personal data).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

impl AuditEvent {
    /// An event of `kind` by `actor`, now.
    pub fn new(kind: &str, actor: impl Into<String>) -> AuditEvent {
        AuditEvent {
            kind: kind.to_owned(),
            at: OffsetDateTime::now_utc(),
            actor: actor.into(),
            source: None,
            inquiry_id: None,
            subject: None,
            detail: Value::Null,
        }
    }

    /// With the request's peer address.
    pub fn from_source(mut self, source: Option<String>) -> Self {
        self.source = source;
        self
    }

    /// About an inquiry.
    pub fn inquiry(mut self, id: Uuid) -> Self {
        self.inquiry_id = Some(id);
        self
    }

    /// About a data subject.
    pub fn subject(mut self, pseudonym: &str) -> Self {
        self.subject = Some(pseudonym.to_owned());
        self
    }

    /// With details.
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// An entry of the log: its position and its event. The leaf is the hash of the stored bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub index: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// A signed statement of the log's size and root at a time (cf. RFC 9162 section 4.10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTreeHead {
    /// Number of entries covered.
    pub tree_size: u64,
    /// Milliseconds since the Unix epoch when it was signed.
    pub timestamp_ms: u64,
    /// Merkle root of the first `tree_size` entries (hex).
    pub root_hash: String,
    /// First 8 bytes of SHA-256 of the signing public key (hex).
    pub key_id: String,
    /// Ed25519 signature (base64) over [`SignedTreeHead::signed_message`].
    pub signature: String,
}

impl SignedTreeHead {
    /// The signed bytes: `"inquiry-gateway tree head v1\n" || size (u64 BE) || timestamp (u64 BE) || root`.
    pub fn signed_message(tree_size: u64, timestamp_ms: u64, root: &Hash) -> Vec<u8> {
        let mut message = b"inquiry-gateway tree head v1\n".to_vec();
        message.extend_from_slice(&tree_size.to_be_bytes());
        message.extend_from_slice(&timestamp_ms.to_be_bytes());
        message.extend_from_slice(root);
        message
    }

    /// The root as bytes.
    pub fn root(&self) -> Option<Hash> {
        hex::decode(&self.root_hash).ok()?.try_into().ok()
    }

    /// True when the signature is valid for `public_key`.
    pub fn verify(&self, public_key: &[u8]) -> bool {
        let (Some(root), Ok(signature)) = (self.root(), BASE64.decode(&self.signature)) else { return false };
        let message = Self::signed_message(self.tree_size, self.timestamp_ms, &root);
        UnparsedPublicKey::new(&ED25519, public_key).verify(&message, &signature).is_ok()
    }
}

/// The Ed25519 key that signs tree heads.
pub struct TreeSigner {
    pair: Ed25519KeyPair,
}

impl TreeSigner {
    /// A signer from a PKCS#8 document.
    pub fn from_pkcs8(document: &[u8]) -> Result<TreeSigner, String> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(document)
            .map(|pair| TreeSigner { pair })
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))
    }

    /// A new random key as a PKCS#8 document.
    pub fn generate_pkcs8() -> Vec<u8> {
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("the operating system provides randomness")
            .as_ref()
            .to_vec()
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs the head of a tree of `size` entries with `root`.
    pub fn sign(&self, size: u64, root: &Hash) -> SignedTreeHead {
        let timestamp_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
        let message = SignedTreeHead::signed_message(size, timestamp_ms, root);
        SignedTreeHead {
            tree_size: size,
            timestamp_ms,
            root_hash: hex::encode(root),
            key_id: key_id(self.public_key()),
            signature: BASE64.encode(self.pair.sign(&message).as_ref()),
        }
    }
}

/// The id of a public key: the first 8 bytes of its SHA-256, hex.
pub fn key_id(public_key: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(public_key)[..8])
}

/// The lowest level of the audit tree whose nodes are stored: one node per 16 entries. The levels
/// below are hashed from the entries when a proof needs them (at most 8 entries read). Storing
/// every level was one more key per entry (~n nodes for n entries), each one an LSM-tree insert,
/// flush and compaction on the ingest path. (Stores written before keep their lower nodes;
/// they are no longer read.)
pub const STORED_NODE_LEVEL: u32 = 4;

/// The audit tree's stored nodes, for proofs.
pub struct StoredNodes<'a>(pub &'a Store);

impl PerfectNodes for StoredNodes<'_> {
    fn perfect(&self, level: u32, index: u64) -> Option<Hash> {
        if level >= STORED_NODE_LEVEL {
            return self.0.audit_node(level, index).ok().flatten();
        }
        // Below the stored levels: hashed from the 2^level entries beneath.
        let width = 1u64 << level;
        let entries = self.0.audit_entries(index * width, (index + 1) * width).ok()?;
        if entries.len() as u64 != width {
            return None;
        }
        let mut hashes: Vec<Hash> = entries.iter().map(|(_, entry)| merkle::leaf_hash(entry)).collect();
        while hashes.len() > 1 {
            hashes = hashes.chunks_exact(2).map(|pair| merkle::node_hash(&pair[0], &pair[1])).collect();
        }
        hashes.pop()
    }
}

/// The writer's side of the log (owned by the pipeline's stage thread).
pub struct AuditLog {
    frontier: Frontier,
    signer: TreeSigner,
    interval: Duration,
    last_signed_at: Instant,
    last_signed_size: u64,
    /// The `audit_entries` gauge (a handle: no registry lookup per entry).
    entries: metrics::Gauge,
}

impl AuditLog {
    /// Opens the log in `store`, restoring its right edge from the stored nodes.
    pub fn open(store: &Store, signer: TreeSigner, interval: Duration) -> Result<AuditLog, StoreError> {
        let size = store.audit_len()?;
        let frontier = Frontier::restore(size, &StoredNodes(store))
            .ok_or_else(|| StoreError::from_message("audit log: stored entries or tree nodes are missing"))?;
        // An unreadable latest head is tampering or damage, not "never signed": refused, like a
        // head that does not match.
        let latest: Option<SignedTreeHead> = match store.latest_audit_head()? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|_| {
                StoreError::from_message(
                    "audit log: the latest signed tree head is unreadable; run `inquiry-gateway audit verify` before starting",
                )
            })?),
            None => None,
        };
        // Never sign on top of a log that no longer matches what was signed.
        if let Some(head) = &latest {
            let root = StoredNodes(store).subtree(0, head.tree_size).filter(|_| head.tree_size <= size);
            if root.is_none() || root != head.root() || !head.verify(signer.public_key()) {
                return Err(StoreError::from_message(&format!(
                    "audit log: the stored log does not match its latest signed tree head (size {}); \
                     run `inquiry-gateway audit verify` before starting",
                    head.tree_size
                )));
            }
        }
        let last_signed_size = latest.map_or(0, |h| h.tree_size);
        let entries = metrics::gauge!(crate::telemetry::AUDIT_ENTRIES);
        entries.set(size as f64);
        Ok(AuditLog { frontier, signer, interval, last_signed_at: Instant::now(), last_signed_size, entries })
    }

    /// Number of entries so far (written or pending in the current batch).
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The right edge, to restore if the batch holding new entries fails.
    pub fn checkpoint(&self) -> (Frontier, u64) {
        (self.frontier.clone(), self.last_signed_size)
    }

    /// Rolls back to a checkpoint (the batch was not written, nor the head signed in it).
    pub fn rollback(&mut self, checkpoint: (Frontier, u64)) {
        (self.frontier, self.last_signed_size) = checkpoint;
        self.entries.set(self.frontier.size() as f64);
    }

    /// Adds an event to `batch`; returns its index.
    pub fn append(&mut self, batch: &mut StoreBatch<'_>, event: AuditEvent) -> u64 {
        self.append_entry(batch, |index| AuditEntry { index, event })
    }

    /// Adds the entry that `entry` makes for the next index: any type that serializes to the JSON
    /// of an [`AuditEntry`] (the per-inquiry entry is typed, so no `serde_json::Value` is built
    /// for it). Returns its index.
    pub fn append_entry<T: Serialize>(&mut self, batch: &mut StoreBatch<'_>, entry: impl FnOnce(u64) -> T) -> u64 {
        let index = self.frontier.size();
        let entry = serde_json::to_vec(&entry(index)).expect("audit entries serialize");
        for (level, node, hash) in self.frontier.push(merkle::leaf_hash(&entry)) {
            if level >= STORED_NODE_LEVEL {
                batch.put_audit_node(level, node, &hash);
            }
        }
        batch.put_audit(index, &entry);
        self.entries.set((index + 1) as f64);
        index
    }

    /// Signs a tree head into `batch` when the interval has passed (or `now`) and the log grew.
    pub fn sign_if_due(&mut self, batch: &mut StoreBatch<'_>, now: bool) -> Option<SignedTreeHead> {
        let size = self.frontier.size();
        if size == self.last_signed_size || (!now && self.last_signed_at.elapsed() < self.interval) {
            return None;
        }
        let head = self.signer.sign(size, &self.frontier.root());
        metrics::gauge!(crate::telemetry::AUDIT_SIGNED_SIZE).set(size as f64);
        batch.put_audit_head(size, &serde_json::to_vec(&head).expect("tree heads serialize"));
        self.last_signed_at = Instant::now();
        self.last_signed_size = size;
        Some(head)
    }
}

/// What `audit verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Entries read.
    pub entries: u64,
    /// Signed tree heads checked.
    pub tree_heads: usize,
    /// Entries covered by the latest signed head.
    pub covered: u64,
    /// Consistency proofs between successive heads checked.
    pub consistency_proofs: usize,
    /// Inclusion proofs checked.
    pub inclusion_proofs: usize,
    /// Every problem found; empty when the log verifies.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the log in `store` (of a stopped gateway) with its stored tree, including the
/// proofs the gateway would serve.
pub fn verify_store(store: &Store, public_key: &[u8]) -> Result<VerifyReport, StoreError> {
    let mut heads = Vec::new();
    let mut unreadable = 0;
    for bytes in store.audit_heads()? {
        match serde_json::from_slice::<SignedTreeHead>(&bytes) {
            Ok(head) => heads.push(head),
            Err(_) => unreadable += 1,
        }
    }
    let len = store.audit_len()?;
    let mut entries = Vec::with_capacity(len as usize);
    let mut from = 0;
    while from < len {
        let to = (from + 100_000).min(len);
        entries.extend(store.audit_entries(from, to)?);
        from = to;
    }
    let mut report = verify(entries, &heads, public_key, Some(&StoredNodes(store)));
    if unreadable > 0 {
        report.problems.push(format!("{unreadable} stored tree head(s) are unreadable"));
    }
    Ok(report)
}

/// An export: NDJSON lines, `{"tree_head": ...}` or an entry exactly as hashed.
pub fn write_export(store: &Store, out: &mut dyn std::io::Write) -> Result<u64, std::io::Error> {
    let io = |e: StoreError| std::io::Error::other(e.to_string());
    for head in store.audit_heads().map_err(io)? {
        out.write_all(b"{\"tree_head\":")?;
        out.write_all(&head)?;
        out.write_all(b"}\n")?;
    }
    let len = store.audit_len().map_err(io)?;
    let mut from = 0;
    while from < len {
        let to = (from + 100_000).min(len);
        for (_, entry) in store.audit_entries(from, to).map_err(io)? {
            out.write_all(&entry)?;
            out.write_all(b"\n")?;
        }
        from = to;
    }
    Ok(len)
}

/// Verifies an export (what an outside witness holds) against a public key it trusts.
pub fn verify_export(text: &str, public_key: &[u8]) -> VerifyReport {
    #[derive(Deserialize)]
    struct HeadLine {
        tree_head: SignedTreeHead,
    }
    let mut heads = Vec::new();
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if line.starts_with("{\"tree_head\":") {
            match serde_json::from_str::<HeadLine>(line) {
                Ok(head) => heads.push(head.tree_head),
                Err(_) => problems.push(format!("line {}: unreadable tree head", number + 1)),
            }
        } else {
            entries.push((entries.len() as u64, line.as_bytes().to_vec()));
        }
    }
    let mut report = verify(entries, &heads, public_key, None);
    report.problems.splice(0..0, problems);
    report
}

/// Verifies a log: every head's signature, every entry against every head's root (a changed,
/// removed, inserted or reordered entry changes the root), each entry's position, consistency
/// proofs between successive heads and inclusion proofs of entries in the latest head. `nodes`,
/// when given, is the tree the gateway serves proofs from: its proofs are checked too.
pub fn verify(
    entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    heads: &[SignedTreeHead],
    public_key: &[u8],
    nodes: Option<&dyn PerfectNodes>,
) -> VerifyReport {
    let mut report = VerifyReport { tree_heads: heads.len(), ..Default::default() };
    let mut heads: Vec<&SignedTreeHead> = heads.iter().collect();
    heads.sort_by_key(|h| h.tree_size);
    for head in &heads {
        if !head.verify(public_key) {
            report.problems.push(format!("tree head of size {}: bad signature", head.tree_size));
        }
    }
    // One pass: rebuild the tree from the entries, keeping every perfect node (for proofs) and
    // the root at each signed size.
    let sizes: std::collections::HashSet<u64> = heads.iter().map(|h| h.tree_size).collect();
    let mut rebuilt = NodeMap::default();
    let mut frontier = Frontier::default();
    let mut roots = std::collections::HashMap::new();
    for (position, (index, entry)) in entries.into_iter().enumerate() {
        let position = position as u64;
        if index != position {
            report.problems.push(format!("entry {position}: stored at index {index} (an entry is missing or moved)"));
        }
        match serde_json::from_slice::<AuditEntry>(&entry) {
            Ok(parsed) if parsed.index != position => {
                report.problems.push(format!("entry {position}: says it is entry {}", parsed.index))
            }
            Ok(_) => {}
            Err(_) => report.problems.push(format!("entry {position}: not a readable audit entry")),
        }
        let leaf = merkle::leaf_hash(&entry);
        for (level, node, hash) in frontier.push(leaf) {
            rebuilt.0.insert((level, node), hash);
        }
        // The first stored node above the entries must agree with the entries beneath it.
        let width = 1u64 << STORED_NODE_LEVEL;
        if let (Some(nodes), true) = (nodes, (position + 1) % width == 0) {
            let node = position / width;
            if nodes.perfect(STORED_NODE_LEVEL, node) != rebuilt.perfect(STORED_NODE_LEVEL, node) {
                report.problems.push(format!(
                    "entries {} to {position}: content does not match the stored tree",
                    position + 1 - width
                ));
            }
        }
        if sizes.contains(&frontier.size()) {
            roots.insert(frontier.size(), frontier.root());
        }
    }
    report.entries = frontier.size();
    let proofs: &dyn PerfectNodes = nodes.unwrap_or(&rebuilt);
    let mut previous: Option<(&SignedTreeHead, Hash)> = None;
    for head in &heads {
        let Some(signed_root) = head.root() else {
            report.problems.push(format!("tree head of size {}: unreadable root", head.tree_size));
            continue;
        };
        match roots.get(&head.tree_size) {
            None => report.problems.push(format!(
                "tree head of size {} covers entries that are missing (only {} present)",
                head.tree_size, report.entries
            )),
            Some(root) if *root != signed_root => report.problems.push(format!(
                "tree head of size {}: the entries do not hash to its signed root (an entry was changed, removed or reordered)",
                head.tree_size
            )),
            Some(_) => {
                if let Some((earlier, earlier_root)) = previous {
                    let proof = proofs.consistency_proof(earlier.tree_size, head.tree_size);
                    let consistent = proof.is_some_and(|p| {
                        merkle::verify_consistency(earlier.tree_size, head.tree_size, &earlier_root, &signed_root, &p)
                    });
                    report.consistency_proofs += 1;
                    if !consistent {
                        report.problems.push(format!(
                            "tree heads {} -> {}: consistency proof fails",
                            earlier.tree_size, head.tree_size
                        ));
                    }
                }
                previous = Some((head, signed_root));
            }
        }
    }
    if let Some((latest, root)) = previous {
        report.covered = latest.tree_size;
        let size = latest.tree_size;
        // Every entry up to 4096, then a spread sample: each proof is checked against the signed root.
        let step = (size / 4096).max(1);
        let mut index = 0;
        while index < size {
            let leaf = rebuilt.perfect(0, index).expect("rebuilt from every entry");
            let proof = proofs.inclusion_proof(index, size);
            report.inclusion_proofs += 1;
            if !proof.is_some_and(|p| merkle::verify_inclusion(&leaf, index, size, &p, &root)) {
                report.problems.push(format!("entry {index}: inclusion proof in the head of size {size} fails"));
            }
            index += step;
        }
    }
    // A stopped gateway signs a head over everything at shutdown: entries beyond the latest head
    // are not protected by any signature, and a removed head would hide changes to them.
    let signed = heads.last().map_or(0, |h| h.tree_size);
    if report.entries > signed {
        report.problems.push(format!(
            "{} entries after the latest signed tree head (size {signed}) are not covered by any signature",
            report.entries - signed,
        ));
    }
    report
}

/// Perfect nodes rebuilt in memory while verifying.
#[derive(Default)]
struct NodeMap(std::collections::HashMap<(u32, u64), Hash>);

impl PerfectNodes for NodeMap {
    fn perfect(&self, level: u32, index: u64) -> Option<Hash> {
        self.0.get(&(level, index)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_log(count: u64, head_every: u64) -> (Vec<(u64, Vec<u8>)>, Vec<SignedTreeHead>, TreeSigner) {
        let signer = TreeSigner::from_pkcs8(&TreeSigner::generate_pkcs8()).unwrap();
        let mut frontier = Frontier::default();
        let mut entries = Vec::new();
        let mut heads = Vec::new();
        for index in 0..count {
            let event = AuditEvent::new("test.event", "gateway").detail(serde_json::json!({ "n": index }));
            let entry = serde_json::to_vec(&AuditEntry { index, event }).unwrap();
            frontier.push(merkle::leaf_hash(&entry));
            entries.push((index, entry));
            if (index + 1) % head_every == 0 {
                heads.push(signer.sign(index + 1, &frontier.root()));
            }
        }
        (entries, heads, signer)
    }

    #[test]
    fn an_untouched_log_verifies() {
        let (entries, heads, signer) = signed_log(49, 7);
        let report = verify(entries.clone(), &heads, signer.public_key(), None);
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!((report.entries, report.covered, report.consistency_proofs), (49, 49, 6));
        // Dropping the latest head leaves entries no signature covers: reported, since a change
        // to them could no longer be seen.
        let report = verify(entries, &heads[..heads.len() - 1], signer.public_key(), None);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains("7 entries after the latest signed tree head"));
    }

    #[test]
    fn any_flipped_byte_removed_or_swapped_entry_or_forged_head_fails() {
        let (entries, heads, signer) = signed_log(20, 5);
        let key = signer.public_key();
        for victim in 0..20 {
            for at in [0, entries[victim].1.len() / 2, entries[victim].1.len() - 1] {
                let mut tampered = entries.clone();
                tampered[victim].1[at] ^= 0x01;
                assert!(!verify(tampered, &heads, key, None).ok(), "flip in entry {victim} at {at}");
            }
        }
        let mut removed = entries.clone();
        removed.remove(3);
        assert!(!verify(removed, &heads, key, None).ok());
        let mut swapped = entries.clone();
        swapped.swap(2, 3);
        assert!(!verify(swapped, &heads, key, None).ok());
        let mut forged = heads.clone();
        forged[1].tree_size += 1;
        assert!(!verify(entries.clone(), &forged, key, None).ok());
        let other = TreeSigner::from_pkcs8(&TreeSigner::generate_pkcs8()).unwrap();
        assert!(!verify(entries, &heads, other.public_key(), None).ok(), "heads signed by another key");
    }

    #[test]
    fn an_unreadable_tree_head_stops_the_start_and_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pkcs8 = TreeSigner::generate_pkcs8();
        let signer = || TreeSigner::from_pkcs8(&pkcs8).unwrap();
        let mut log = AuditLog::open(&store, signer(), Duration::from_secs(3600)).unwrap();
        let mut batch = store.batch();
        log.append(&mut batch, AuditEvent::new("test.event", "gateway"));
        let head = log.sign_if_due(&mut batch, true).expect("signed");
        batch.commit().unwrap();
        let public_key = signer().public_key().to_vec();
        assert!(verify_store(&store, &public_key).unwrap().ok());
        // The latest head damaged: no start on top of it, and verification says so.
        let mut batch = store.batch();
        batch.put_audit_head(head.tree_size, b"{not a tree head");
        batch.commit().unwrap();
        assert!(AuditLog::open(&store, signer(), Duration::from_secs(3600)).is_err());
        let report = verify_store(&store, &public_key).unwrap();
        assert!(report.problems.iter().any(|p| p.contains("unreadable")), "{:?}", report.problems);
    }

    #[test]
    fn the_store_keeps_the_upper_nodes_and_proofs_hash_the_lower_ones_from_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pkcs8 = TreeSigner::generate_pkcs8();
        let mut log =
            AuditLog::open(&store, TreeSigner::from_pkcs8(&pkcs8).unwrap(), Duration::from_secs(3600)).unwrap();
        // Several batches, the last one signed; 77 entries: whole 16-entry nodes and a ragged edge.
        for chunk in (0..77u64).collect::<Vec<_>>().chunks(10) {
            let mut batch = store.batch();
            for n in chunk {
                log.append(&mut batch, AuditEvent::new("test.event", "gateway").detail(serde_json::json!({ "n": n })));
            }
            log.sign_if_due(&mut batch, chunk.contains(&76));
            batch.commit().unwrap();
        }
        let entries = store.audit_entries(0, 77).unwrap();
        let mut rebuilt = NodeMap::default();
        let mut frontier = Frontier::default();
        for (_, entry) in &entries {
            for (level, node, hash) in frontier.push(merkle::leaf_hash(entry)) {
                rebuilt.0.insert((level, node), hash);
            }
        }
        // Only the levels from STORED_NODE_LEVEL up are stored, and every node reads the same as
        // the tree rebuilt from the entries.
        for (&(level, index), hash) in &rebuilt.0 {
            assert_eq!(
                store.audit_node(level, index).unwrap().is_some(),
                level >= STORED_NODE_LEVEL,
                "{level}/{index}"
            );
            assert_eq!(StoredNodes(&store).perfect(level, index).as_ref(), Some(hash), "node {level}/{index}");
        }
        assert_eq!(StoredNodes(&store).perfect(2, 19), None, "a node over entries not written yet");
        let root = frontier.root();
        for index in 0..77 {
            let proof = StoredNodes(&store).inclusion_proof(index, 77).unwrap();
            let leaf = merkle::leaf_hash(&entries[index as usize].1);
            assert!(merkle::verify_inclusion(&leaf, index, 77, &proof, &root), "entry {index}");
        }
        // The log reopens on its right edge (restored from stored and hashed nodes) and verifies.
        drop(log);
        let log = AuditLog::open(&store, TreeSigner::from_pkcs8(&pkcs8).unwrap(), Duration::from_secs(3600)).unwrap();
        assert_eq!((log.size(), log.frontier.root()), (77, root));
        let report = verify_store(&store, log.signer.public_key()).unwrap();
        assert!(report.ok() && report.entries == 77, "{:?}", report.problems);
        // An entry rewritten on disk is named with the 16 entries of its stored node.
        let (index, entry) = store.audit_entries(37, 38).unwrap().remove(0);
        let tampered = String::from_utf8(entry).unwrap().replace("test.event", "test.evenT");
        store.rewrite_audit_entry(index, tampered.as_bytes()).unwrap();
        let report = verify_store(&store, log.signer.public_key()).unwrap();
        assert!(report.problems.iter().any(|p| p.contains("entries 32 to 47")), "{:?}", report.problems);
    }
}
