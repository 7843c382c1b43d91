//! The signing keys in use: decrypted from the store with the KEK, chosen by activation time,
//! published as a JWKS while any token they signed may still be live, and rotated so a new key
//! is published before it signs.

use std::collections::HashMap;
use std::sync::Arc;

use mandate_audit::{AuditEncoder, AuditLog};
use mandate_core::AuditEvent;
use mandate_crypto::{Alg, Kek, KekError, KeyError, PublicKey, SigningKey};
use mandate_store::{Mutation, Store, StoreError, StoredKey, WriteJob};
use parking_lot::RwLock;
use serde_json::{Value, json};

pub const PURPOSE_TOKEN: &str = "token";
pub const PURPOSE_AUDIT: &str = "audit";
/// Signs JWT-SVIDs (SPIFFE clients accept ES256, not EdDSA).
pub const PURPOSE_JWT_SVID: &str = "jwt-svid";
/// The SPIFFE X.509 CA key.
pub const PURPOSE_X509_CA: &str = "x509-ca";

/// The keys every installation has from its first start.
const REQUIRED: &[(&str, Alg)] = &[
    (PURPOSE_TOKEN, Alg::EdDSA),
    (PURPOSE_TOKEN, Alg::ES256),
    (PURPOSE_AUDIT, Alg::EdDSA),
    (PURPOSE_JWT_SVID, Alg::ES256),
    (PURPOSE_X509_CA, Alg::ES256),
];

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("stored key {kid} has unknown algorithm {alg}")]
    UnknownAlg { kid: String, alg: String },
    #[error("no {0} key is active")]
    NoActiveKey(String),
}

struct Loaded {
    meta: StoredKey,
    key: Arc<SigningKey>,
}

#[derive(Default)]
struct Snapshot {
    /// The signing key per purpose and algorithm.
    signers: HashMap<(String, Alg), Arc<SigningKey>>,
    /// Per purpose, the public keys that verify what it signed, and their JWK Set.
    published: HashMap<String, (Arc<Vec<PublicKey>>, Arc<Value>)>,
}

pub struct Keyring {
    kek: Kek,
    /// How long a retired key stays published: the longest a token it signed can live.
    max_token_ttl_ms: i64,
    loaded: RwLock<HashMap<String, Loaded>>,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl Keyring {
    /// Loads every stored key, first creating (and auditing) the ones a fresh installation
    /// lacks: an Ed25519 and an ES256 token key and an Ed25519 audit key.
    pub async fn open(
        store: &Arc<dyn Store>,
        kek: Kek,
        now_ms: i64,
        max_token_ttl_secs: i64,
    ) -> Result<Self, KeyringError> {
        let stored = store.signing_keys().await?;
        let mut missing = Vec::new();
        for &(purpose, alg) in REQUIRED {
            if !stored.iter().any(|k| k.purpose == purpose && k.alg == alg.as_str()) {
                missing.push(new_stored_key(&kek, purpose, alg, now_ms, now_ms)?);
            }
        }
        if !missing.is_empty() {
            let jobs = missing
                .into_iter()
                .map(|k| WriteJob {
                    event: key_event("key.create", &k),
                    mutation: Some(Mutation::InsertKey(k)),
                    ts_ms: now_ms,
                })
                .collect();
            // Before the audit writer exists (it needs the audit key), append directly.
            let outcomes = store.commit(jobs, Arc::new(AuditEncoder)).await?;
            if let Some(refused) = outcomes.iter().find_map(|o| o.result.as_ref().err()) {
                // Another process created the keys at the same moment; theirs are as good.
                tracing::info!(%refused, "key created concurrently");
            }
        }
        let mut loaded = HashMap::new();
        load_into(&kek, &mut loaded, store.signing_keys().await?)?;
        let max_token_ttl_ms = max_token_ttl_secs * 1000;
        let snapshot = select(&loaded, now_ms, max_token_ttl_ms)?;
        Ok(Self { kek, max_token_ttl_ms, loaded: RwLock::new(loaded), snapshot: RwLock::new(Arc::new(snapshot)) })
    }

    /// Re-reads the key table (new keys from a rotation elsewhere) and re-selects for `now_ms`.
    pub async fn refresh(&self, store: &dyn Store, now_ms: i64) -> Result<(), KeyringError> {
        let stored = store.signing_keys().await?;
        let snapshot = {
            let mut loaded = self.loaded.write();
            load_into(&self.kek, &mut loaded, stored)?;
            select(&loaded, now_ms, self.max_token_ttl_ms)?
        };
        *self.snapshot.write() = Arc::new(snapshot);
        Ok(())
    }

    /// Seals a small secret a record must keep (a CIBA client's notification token) under the
    /// KEK, bound to `record_id`. Record ids contain a `:` (`purpose:id`), so they never equal a
    /// key id, and a blob sealed for one record cannot be opened as another's or as a key.
    pub fn seal_secret(&self, record_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyringError> {
        debug_assert!(record_id.contains(':'), "record ids are namespaced");
        Ok(self.kek.seal(record_id, plaintext)?)
    }

    /// Opens what [`Self::seal_secret`] sealed for the same `record_id`.
    pub fn open_secret(&self, record_id: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyringError> {
        Ok(self.kek.open(record_id, sealed)?)
    }

    /// The access-token signing key for `alg`.
    pub fn signer(&self, alg: Alg) -> Result<Arc<SigningKey>, KeyringError> {
        self.signer_for(PURPOSE_TOKEN, alg)
    }

    pub fn signer_for(&self, purpose: &str, alg: Alg) -> Result<Arc<SigningKey>, KeyringError> {
        self.snapshot
            .read()
            .signers
            .get(&(purpose.to_owned(), alg))
            .cloned()
            .ok_or_else(|| KeyringError::NoActiveKey(purpose.to_owned()))
    }

    pub fn audit_key(&self) -> Result<Arc<SigningKey>, KeyringError> {
        self.signer_for(PURPOSE_AUDIT, Alg::EdDSA)
    }

    /// Keys that verify Mandate's access tokens: active, scheduled and recently retired ones.
    pub fn published(&self) -> Arc<Vec<PublicKey>> {
        self.published_for(PURPOSE_TOKEN)
    }

    pub fn published_for(&self, purpose: &str) -> Arc<Vec<PublicKey>> {
        self.snapshot.read().published.get(purpose).map(|(keys, _)| Arc::clone(keys)).unwrap_or_default()
    }

    /// The JWK Set document for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Arc<Value> {
        self.jwks_for(PURPOSE_TOKEN)
    }

    pub fn jwks_for(&self, purpose: &str) -> Arc<Value> {
        self.snapshot
            .read()
            .published
            .get(purpose)
            .map(|(_, jwks)| Arc::clone(jwks))
            .unwrap_or_else(|| Arc::new(json!({"keys": []})))
    }

    /// Creates a new `purpose`/`alg` key that is published now and signs from `now + lead`; the
    /// key it replaces stops signing then and stays published until its last token expires.
    pub async fn rotate(
        &self,
        log: &AuditLog,
        purpose: &str,
        alg: Alg,
        lead_ms: i64,
        now_ms: i64,
        correlation_id: &str,
    ) -> Result<String, KeyringError> {
        let activate_at = now_ms + lead_ms.max(0);
        let new_key = new_stored_key(&self.kek, purpose, alg, now_ms, activate_at)?;
        let kid = new_key.kid.clone();
        let replaced: Vec<String> = self
            .loaded
            .read()
            .values()
            .filter(|l| l.meta.purpose == purpose && l.key.alg() == alg && l.meta.retire_at_ms.is_none())
            .map(|l| l.meta.kid.clone())
            .collect();
        let event = key_event("key.rotate", &new_key).with_correlation(correlation_id);
        log.apply(Mutation::InsertKey(new_key), event)
            .await
            .map_err(|e| KeyringError::Audit(e.to_string()))?
            .map_err(|e| KeyringError::Audit(e.to_string()))?;
        for old in replaced {
            let event = AuditEvent::allow("key.retire", correlation_id)
                .with_detail(format!("kid={old} retires_at_ms={activate_at} replaced_by={kid}"));
            log.apply(Mutation::RetireKey { kid: old, retire_at_ms: activate_at }, event)
                .await
                .map_err(|e| KeyringError::Audit(e.to_string()))?
                .map_err(|e| KeyringError::Audit(e.to_string()))?;
        }
        self.refresh(log.store(), now_ms).await?;
        Ok(kid)
    }
}

/// Decrypts keys not seen before and updates the metadata (retirement) of known ones.
fn load_into(kek: &Kek, loaded: &mut HashMap<String, Loaded>, stored: Vec<StoredKey>) -> Result<(), KeyringError> {
    for meta in stored {
        if let Some(existing) = loaded.get_mut(&meta.kid) {
            existing.meta = meta;
            continue;
        }
        let alg = Alg::parse(&meta.alg)
            .ok_or_else(|| KeyringError::UnknownAlg { kid: meta.kid.clone(), alg: meta.alg.clone() })?;
        let der = kek.open(&meta.kid, &meta.sealed_private_key)?;
        let key = Arc::new(SigningKey::from_pkcs8(alg, &der)?);
        loaded.insert(meta.kid.clone(), Loaded { meta, key });
    }
    Ok(())
}

/// Picks, for `now_ms`, the newest activated and unretired key per purpose and algorithm, and
/// per purpose the keys to publish.
fn select(loaded: &HashMap<String, Loaded>, now_ms: i64, max_token_ttl_ms: i64) -> Result<Snapshot, KeyringError> {
    let mut snapshot = Snapshot::default();
    let signs_now = |l: &Loaded| l.meta.activate_at_ms <= now_ms && l.meta.retire_at_ms.is_none_or(|r| now_ms < r);
    for l in loaded.values().filter(|l| signs_now(l)) {
        let slot = (l.meta.purpose.clone(), l.key.alg());
        let newer = snapshot.signers.get(&slot).is_none_or(|current| {
            let current_meta = &loaded[current.kid()].meta;
            (l.meta.activate_at_ms, &l.meta.kid) > (current_meta.activate_at_ms, &current_meta.kid)
        });
        if newer {
            snapshot.signers.insert(slot, Arc::clone(&l.key));
        }
    }
    let mut by_purpose: HashMap<String, Vec<(i64, PublicKey)>> = HashMap::new();
    for l in loaded.values().filter(|l| l.meta.retire_at_ms.is_none_or(|r| now_ms < r + max_token_ttl_ms)) {
        by_purpose.entry(l.meta.purpose.clone()).or_default().push((l.meta.activate_at_ms, l.key.public().clone()));
    }
    for (purpose, mut keys) in by_purpose {
        keys.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.kid().cmp(b.1.kid())));
        let keys: Vec<PublicKey> = keys.into_iter().map(|(_, k)| k).collect();
        let jwks = json!({"keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>()});
        snapshot.published.insert(purpose, (Arc::new(keys), Arc::new(jwks)));
    }
    for &(purpose, alg) in REQUIRED {
        if !snapshot.signers.contains_key(&(purpose.to_owned(), alg)) {
            return Err(KeyringError::NoActiveKey(purpose.to_owned()));
        }
    }
    Ok(snapshot)
}

fn new_stored_key(
    kek: &Kek,
    purpose: &str,
    alg: Alg,
    now_ms: i64,
    activate_at_ms: i64,
) -> Result<StoredKey, KeyringError> {
    let key = SigningKey::generate(alg)?;
    let kid = key.kid().to_owned();
    Ok(StoredKey {
        sealed_private_key: kek.seal(&kid, key.pkcs8())?,
        kid,
        purpose: purpose.to_owned(),
        alg: alg.as_str().to_owned(),
        created_at_ms: now_ms,
        activate_at_ms,
        retire_at_ms: None,
    })
}

fn key_event(action: &str, key: &StoredKey) -> AuditEvent {
    AuditEvent::allow(action, "startup").with_detail(format!(
        "kid={} alg={} purpose={} activates_at_ms={}",
        key.kid, key.alg, key.purpose, key.activate_at_ms
    ))
}
