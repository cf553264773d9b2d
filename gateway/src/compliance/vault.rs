//! Keys for personal data: one AES-256-GCM data key per data subject, wrapped by the
//! key-encryption key (KEK); a keyed index that finds a subject from a buyer identity.
//!
//! Erasing a subject destroys its wrapped data key: every copy of its sealed fields, in the
//! embedded store, Kafka, the CQL tables and any backup, becomes unreadable at once.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

/// A sealed value could not be opened: wrong key, wrong binding, or changed bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot open sealed data (wrong key, wrong binding or tampered)")]
pub struct OpenError;

/// A data subject's key, unwrapped, with the pseudonym it is bound to.
pub struct DataKey {
    /// The subject's random pseudonym (`bp_` + 32 hex digits).
    pub pseudonym: String,
    key: LessSafeKey,
}

/// The key-encryption key, the index key and the tenant every seal is bound to.
pub struct Vault {
    tenant: String,
    kek: LessSafeKey,
    index_key: hmac::Key,
    rng: SystemRandom,
}

impl Vault {
    /// A vault for `tenant` with the 32-byte `kek` and the secret `index_key`.
    pub fn new(tenant: &str, kek: &[u8; 32], index_key: &[u8]) -> Vault {
        Vault {
            tenant: tenant.to_owned(),
            kek: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).expect("32-byte AES key")),
            index_key: hmac::Key::new(hmac::HMAC_SHA256, index_key),
            rng: SystemRandom::new(),
        }
    }

    /// The tenant (data controller) this vault seals for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The subject index of a buyer `identity` within `scope`: HMAC-SHA256 under the index key, so
    /// nobody without the key can test whether an e-mail address is known.
    pub fn index(&self, scope: &str, identity: &str) -> [u8; 32] {
        self.keyed_hash(&[b"subject", scope.as_bytes(), identity.as_bytes()])
    }

    /// A keyed fingerprint of a payload (idempotency checks), useless without the index key.
    pub fn fingerprint(&self, payload: &[u8]) -> [u8; 32] {
        self.keyed_hash(&[b"fingerprint", payload])
    }

    /// A keyed fingerprint of an order id for the audit log: proof of which order to whoever holds
    /// the index key, where a plain hash of a short, often sequential id is reversed by trying them.
    pub fn order_fingerprint(&self, order_id: &str) -> [u8; 32] {
        self.keyed_hash(&[b"order", order_id.as_bytes()])
    }

    fn keyed_hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.index_key);
        for part in parts {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        context.sign().as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    /// A new data subject: a random pseudonym and data key, and the key wrapped for storage.
    pub fn new_subject(&self) -> (DataKey, Vec<u8>) {
        let mut raw = [0u8; 16 + 32];
        self.rng.fill(&mut raw).expect("the operating system provides randomness");
        let pseudonym = format!("bp_{}", hex::encode(&raw[..16]));
        let wrapped = self.seal_with(&self.kek, &wrap_binding(&self.tenant, &pseudonym), &raw[16..]);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw[16..]).expect("32-byte AES key"));
        raw.fill(0);
        (DataKey { pseudonym, key }, wrapped)
    }

    /// Unwraps a stored data key of `pseudonym`.
    pub fn unwrap_key(&self, pseudonym: &str, wrapped: &[u8]) -> Result<DataKey, OpenError> {
        let mut raw = self.open_with(&self.kek, &wrap_binding(&self.tenant, pseudonym), wrapped)?;
        let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| OpenError)?;
        raw.fill(0);
        Ok(DataKey { pseudonym: pseudonym.to_owned(), key: LessSafeKey::new(key) })
    }

    /// Seals a secret the gateway keeps for itself (a platform's refreshed OAuth tokens) under
    /// the KEK, bound to (tenant, `name`).
    pub fn seal_secret(&self, name: &str, plaintext: &[u8]) -> Vec<u8> {
        self.seal_with(&self.kek, &binding(&["secret", &self.tenant, name]), plaintext)
    }

    /// Opens what [`Vault::seal_secret`] sealed under `name`.
    pub fn open_secret(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        self.open_with(&self.kek, &binding(&["secret", &self.tenant, name]), sealed)
    }

    /// Seals `field` of inquiry `inquiry_id` for the subject of `key`: base64 of
    /// `nonce || ciphertext || tag`, bound to (tenant, pseudonym, inquiry id, field).
    pub fn seal(&self, key: &DataKey, inquiry_id: Uuid, field: &str, plaintext: &[u8]) -> String {
        BASE64.encode(self.seal_bytes(key, inquiry_id, field, plaintext))
    }

    /// Like [`Vault::seal`], as bytes (for the raw payload).
    pub fn seal_bytes(&self, key: &DataKey, inquiry_id: Uuid, field: &str, plaintext: &[u8]) -> Vec<u8> {
        self.seal_with(&key.key, &field_binding(&self.tenant, &key.pseudonym, inquiry_id, field), plaintext)
    }

    /// Opens what [`Vault::seal`] sealed.
    pub fn open(&self, key: &DataKey, inquiry_id: Uuid, field: &str, sealed: &str) -> Result<String, OpenError> {
        let bytes = BASE64.decode(sealed).map_err(|_| OpenError)?;
        String::from_utf8(self.open_bytes(key, inquiry_id, field, &bytes)?).map_err(|_| OpenError)
    }

    /// Opens what [`Vault::seal_bytes`] sealed.
    pub fn open_bytes(
        &self,
        key: &DataKey,
        inquiry_id: Uuid,
        field: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        self.open_with(&key.key, &field_binding(&self.tenant, &key.pseudonym, inquiry_id, field), sealed)
    }

    fn seal_with(&self, key: &LessSafeKey, binding: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = self.random_nonce();
        // One buffer, sealed in place after the nonce: `nonce || ciphertext || tag`.
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(binding), &mut out[NONCE_LEN..])
            .expect("AES-GCM seals any length a request can have");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// A random nonce, from the operating system's generator like every other random value here,
    /// but read a few hundred nonces at a time: one system call per sealed field was a quarter of
    /// the sealing cost.
    fn random_nonce(&self) -> [u8; NONCE_LEN] {
        const NONCES: usize = 341;
        thread_local! {
            static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
        }
        POOL.with_borrow_mut(|(pool, used)| {
            if *used == pool.len() {
                // Filled aside and swapped in only when filled: a failed read (a panic) leaves
                // the pool exhausted, never zeroed and usable.
                let mut fresh = vec![0u8; NONCES * NONCE_LEN];
                self.rng.fill(&mut fresh).expect("the operating system provides randomness");
                *pool = fresh;
                *used = 0;
            }
            let nonce: [u8; NONCE_LEN] = pool[*used..*used + NONCE_LEN].try_into().expect("a whole nonce");
            // Each nonce is used once: wiped from the pool as it is taken.
            pool[*used..*used + NONCE_LEN].fill(0);
            *used += NONCE_LEN;
            nonce
        })
    }

    fn open_with(&self, key: &LessSafeKey, binding: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let mut body = body.to_vec();
        let len = key.open_in_place(nonce, Aad::from(binding), &mut body).map_err(|_| OpenError)?.len();
        body.truncate(len);
        Ok(body)
    }
}

/// Associated data of a wrapped data key.
fn wrap_binding(tenant: &str, pseudonym: &str) -> Vec<u8> {
    binding(&["data-key", tenant, pseudonym])
}

/// Associated data of a sealed field: tenant, subject pseudonym, inquiry id and field name.
fn field_binding(tenant: &str, pseudonym: &str, inquiry_id: Uuid, field: &str) -> Vec<u8> {
    binding(&["field", tenant, pseudonym, &inquiry_id.to_string(), field])
}

/// Length-prefixed parts, so no part can imitate another.
fn binding(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(tenant: &str) -> Vault {
        Vault::new(tenant, &[7u8; 32], b"index-key-index-key-index-key-00")
    }

    #[test]
    fn a_sealed_field_opens_only_with_its_key_and_its_exact_binding() {
        let vault = vault("acme");
        let (key, wrapped) = vault.new_subject();
        let id = Uuid::now_v7();
        let sealed = vault.seal(&key, id, "email", b"anna@example.com");
        assert!(!sealed.contains("anna"));
        let unwrapped = vault.unwrap_key(&key.pseudonym, &wrapped).unwrap();
        assert_eq!(vault.open(&unwrapped, id, "email", &sealed).unwrap(), "anna@example.com");
        // Another field, inquiry, subject or tenant: refused.
        assert_eq!(vault.open(&key, id, "name", &sealed), Err(OpenError));
        assert_eq!(vault.open(&key, Uuid::now_v7(), "email", &sealed), Err(OpenError));
        let (other, _) = vault.new_subject();
        assert_eq!(vault.open(&other, id, "email", &sealed), Err(OpenError));
        assert!(vault.unwrap_key(&other.pseudonym, &wrapped).is_err(), "a wrapped key is bound to its pseudonym");
        assert!(self::vault("other-tenant").unwrap_key(&key.pseudonym, &wrapped).is_err());
        // One flipped bit anywhere: refused.
        let mut bytes = BASE64.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(vault.open(&key, id, "email", &BASE64.encode(bytes)), Err(OpenError));
    }

    #[test]
    fn nonces_never_repeat_across_pool_refills() {
        let vault = vault("acme");
        let nonces: std::collections::HashSet<_> = (0..2000).map(|_| vault.random_nonce()).collect();
        assert_eq!(nonces.len(), 2000);
        assert!(!nonces.contains(&[0u8; NONCE_LEN]));
    }

    #[test]
    fn pseudonyms_are_random_and_the_index_is_keyed() {
        let vault = vault("acme");
        let (a, _) = vault.new_subject();
        let (b, _) = vault.new_subject();
        assert_ne!(a.pseudonym, b.pseudonym);
        assert_eq!(a.pseudonym.len(), 35);
        assert_eq!(vault.index("", "email:a@example.com"), vault.index("", "email:a@example.com"));
        let other_key = Vault::new("acme", &[7u8; 32], b"another-index-key-another-index-");
        assert_ne!(other_key.index("", "email:a@example.com"), vault.index("", "email:a@example.com"));
        assert_ne!(vault.index("whatsapp/1", "id:1"), vault.index("line/1", "id:1"));
    }
}
