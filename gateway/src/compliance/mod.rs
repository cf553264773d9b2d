//! Compliance: personal data sealed per data subject, a tamper-evident audit trail and data
//! subject requests (export and erasure). See docs/compliance.md.
//!
//! - [`vault`]: the key-encryption key, per-subject data keys, sealing and the keyed index.
//! - [`subjects`]: the registry of data subjects (pseudonyms, keys), sealing inquiries.
//! - [`merkle`]: RFC 9162 Merkle tree hashing and proofs.
//! - [`audit`]: the audit log (Merkle leaves in the store), signed tree heads, verification.
//! - [`requests`]: data subject requests with their jurisdiction's deadlines.

pub mod audit;
pub mod fanout;
pub mod merkle;
pub mod requests;
pub mod shared;
pub mod subjects;
pub mod vault;

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::config::Config;
use crate::store::Store;
use audit::TreeSigner;
use subjects::Subjects;
use vault::Vault;

/// An HMAC-SHA256 key for one purpose (`label`), derived from the replicas' shared
/// `store.pseudonym_key`: what one replica signs for another (forwarded replies, peer reads).
pub fn replica_key(pseudonym_key: &[u8], label: &[u8]) -> ring::hmac::Key {
    let derived = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pseudonym_key), label);
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
}

/// SHA-256 of `bytes`, lower-case hex: the digests the audit log records, and plugin module
/// versions. Written into a buffer (`hex::encode` goes char by char; it runs per inquiry).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut out = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(bytes), &mut out).expect("64 hex digits for 32 bytes");
    String::from_utf8_lossy(&out).into_owned()
}

/// Why the compliance keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("compliance keys: {0}")]
pub struct KeyError(pub String);

/// The keys of a running gateway.
pub struct Keys {
    /// Seals and opens personal data.
    pub vault: Arc<Vault>,
    /// Signs the audit log's tree heads.
    pub signer: TreeSigner,
    /// True when the key-encryption key was generated beside the data (single machine only).
    pub generated_kek: bool,
}

/// Where generated keys go when the config names none.
pub fn key_dir(config: &Config) -> PathBuf {
    config.store.path.join("keys")
}

/// The signing key's path (configured, or the generated one).
pub fn signing_key_path(config: &Config) -> PathBuf {
    config.compliance.signing_key_file.clone().unwrap_or_else(|| key_dir(config).join("audit-signing.pk8"))
}

/// Loads (or, for the embedded default, generates) the KEK and the tree-head signing key.
pub fn load_keys(config: &Config, index_key: &[u8]) -> Result<Keys, KeyError> {
    let compliance = &config.compliance;
    let (kek_text, generated_kek) = match (&compliance.kek, &compliance.kek_file) {
        (Some(kek), _) => (kek.clone(), false),
        (None, Some(file)) => (read_text(file)?, false),
        (None, None) => {
            let path = key_dir(config).join("kek");
            let (text, _) = read_or_create(&path, || {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).expect("the operating system provides randomness");
                BASE64.encode(key).into_bytes()
            })?;
            (String::from_utf8_lossy(&text).into_owned(), true)
        }
    };
    let kek: [u8; 32] = BASE64
        .decode(kek_text.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| KeyError("the key-encryption key is not base64 of 32 bytes".to_owned()))?;
    let (document, _) = read_or_create(&signing_key_path(config), TreeSigner::generate_pkcs8)?;
    let signer = TreeSigner::from_pkcs8(&document).map_err(KeyError)?;
    Ok(Keys { vault: Arc::new(Vault::new(&compliance.tenant, &kek, index_key)), signer, generated_kek })
}

/// The registry of data subjects over `store`.
pub fn subjects(keys: &Keys, store: &Store) -> Arc<Subjects> {
    Arc::new(Subjects::new(keys.vault.clone(), store.clone()))
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))
}

/// Reads a key file, or creates it (mode 0600) with `create()`; true when created.
fn read_or_create(path: &Path, create: impl FnOnce() -> Vec<u8>) -> Result<(Vec<u8>, bool), KeyError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok((bytes, false)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let bytes = create();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| KeyError(format!("cannot create {}: {e}", dir.display())))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| KeyError(format!("cannot create {}: {e}", path.display())))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| KeyError(format!("cannot write {}: {e}", path.display())))?;
            Ok((bytes, true))
        }
        Err(err) => Err(KeyError(format!("cannot read {}: {err}", path.display()))),
    }
}
