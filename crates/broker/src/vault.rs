//! The broker's encrypted vault of upstream credentials (`vault.json`): envelope encryption
//! (a random AES-256-GCM data key per entry, wrapped by a KEK from Argon2id or a key file) and a
//! MAC over the whole document, so a wrong key and any tampering are told apart and refused.
//! The file format is described in docs/broker-vault.md.

mod file;
mod key;
mod secret;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mandate_core::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use key::{KdfParams, MAX_PASSPHRASE_LEN, MIN_PASSPHRASE_LEN, VaultKey};
pub use secret::{ClientAuth, EntryKind, MAX_SECRET_LEN, Secret, SecretString};

use key::{Kdf, Keys};

const FORMAT: &str = "mandate-vault";
const VERSION: u32 = 1;
/// Longest connection name (`github:work`).
pub const MAX_NAME_LEN: usize = 128;
/// Most entries one vault holds.
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("wrong vault passphrase or key file")]
    WrongKey,
    #[error("{0}")]
    KeyMismatch(&'static str),
    #[error("the vault file was tampered with or is damaged ({0}); refusing to use it")]
    Tampered(&'static str),
    #[error("no vault at {}; create one with `mandate broker vault init`", .0.display())]
    NotFound(PathBuf),
    #[error("{} already exists", .0.display())]
    AlreadyExists(PathBuf),
    #[error("no vault entry named {0:?}")]
    UnknownEntry(String),
    #[error("a vault entry named {0:?} already exists")]
    DuplicateEntry(String),
    #[error(
        "invalid connection name {0:?}: use [a-z0-9_.-]+ with an optional :[a-z0-9_.-]+ suffix, at most 128 characters"
    )]
    InvalidName(String),
    #[error("invalid secret: {0}")]
    InvalidSecret(&'static str),
    #[error("invalid entry: {0}")]
    InvalidParams(String),
    #[error("{0}")]
    InvalidKey(String),
    #[error("the vault holds the maximum of {MAX_ENTRIES} entries")]
    Full,
    #[error("the vault was rekeyed or replaced by another process; open it again")]
    ChangedElsewhere,
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cryptographic operation failed")]
    Crypto,
}

/// An entry as `list` shows it: never any secret material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryInfo {
    pub id: String,
    pub name: String,
    pub kind: EntryKind,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; when the secret was last replaced.
    pub rotated: Option<String>,
}

/// How a new vault is made.
#[derive(Clone)]
pub struct VaultOptions {
    pub kdf: KdfParams,
    pub clock: Arc<dyn Clock>,
}

impl Default for VaultOptions {
    fn default() -> Self {
        Self { kdf: KdfParams::default(), clock: Arc::new(SystemClock) }
    }
}

/// The file: the document and its MAC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultFile {
    vault: Document,
    mac: String,
}

/// Everything the MAC covers: header and entries, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: String,
    version: u32,
    kdf: Kdf,
    key_check: String,
    entries: Vec<StoredEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEntry {
    id: String,
    name: String,
    kind: EntryKind,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotated: Option<String>,
    /// The entry's data key, sealed under the KEK's wrapping subkey with the entry id as AAD.
    dek: String,
    /// The secret value sealed under the data key (absent for `mandate_workload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// A refresh-token or ID-JAG entry's client secret, sealed under the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    /// An ID-JAG entry's client secret at the IdP, sealed under the data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idp_client_secret: Option<String>,
}

/// Associated data binding a ciphertext to its entry's identity and parameters.
#[derive(Serialize)]
struct EntryAad<'a> {
    v: u32,
    id: &'a str,
    name: &'a str,
    kind: &'a EntryKind,
    field: &'a str,
}

fn entry_aad(entry_id: &str, name: &str, kind: &EntryKind, field: &str) -> Result<Vec<u8>, VaultError> {
    serde_json::to_vec(&EntryAad { v: VERSION, id: entry_id, name, kind, field }).map_err(|_| VaultError::Crypto)
}

/// An opened vault: the document in memory and the derived keys. Every change is a locked
/// read-modify-write of the file, so changes made by another process are kept.
pub struct Vault {
    path: PathBuf,
    keys: Keys,
    document: Document,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("path", &self.path).field("entries", &self.document.entries.len()).finish()
    }
}

impl Vault {
    /// Creates an empty vault at `path` (refusing to replace an existing file).
    pub fn create(path: &Path, key: &VaultKey) -> Result<Self, VaultError> {
        Self::create_with(path, key, &VaultOptions::default())
    }

    pub fn create_with(path: &Path, key: &VaultKey, options: &VaultOptions) -> Result<Self, VaultError> {
        key.check_strength()?;
        let kdf = Kdf::new_for(key, options.kdf)?;
        let keys = kdf.derive(key)?;
        let document =
            Document { format: FORMAT.into(), version: VERSION, key_check: keys.key_check(), kdf, entries: vec![] };
        let bytes = serialize(&document, &keys)?;
        file::write_new(path, &bytes)?;
        Ok(Self { path: path.to_path_buf(), keys, document, clock: options.clock.clone() })
    }

    /// Opens and verifies the vault: `WrongKey` when the key does not fit, `Tampered` when the
    /// document was changed (or damaged). Deriving a passphrase key is deliberately slow.
    pub fn open(path: &Path, key: &VaultKey) -> Result<Self, VaultError> {
        Self::open_with(path, key, Arc::new(SystemClock))
    }

    pub fn open_with(path: &Path, key: &VaultKey, clock: Arc<dyn Clock>) -> Result<Self, VaultError> {
        let bytes = file::read(path)?;
        let parsed = parse(&bytes)?;
        parsed.vault.kdf.check_bounds()?;
        let keys = parsed.vault.kdf.derive(key)?;
        let document = verify(parsed, &keys)?;
        Ok(Self { path: path.to_path_buf(), keys, document, clock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file (entries another process added or rotated).
    pub fn reload(&mut self) -> Result<(), VaultError> {
        self.document = self.read_current()?;
        Ok(())
    }

    /// Every entry, without secret material.
    pub fn list(&self) -> Vec<EntryInfo> {
        self.document
            .entries
            .iter()
            .map(|e| EntryInfo {
                id: e.id.clone(),
                name: e.name.clone(),
                kind: e.kind.clone(),
                created: e.created.clone(),
                rotated: e.rotated.clone(),
            })
            .collect()
    }

    /// The entry's kind and parameters, without decrypting anything.
    pub fn kind(&self, name: &str) -> Option<&EntryKind> {
        self.document.entries.iter().find(|e| e.name == name).map(|e| &e.kind)
    }

    /// Decrypts the named entry.
    pub fn get(&self, name: &str) -> Result<Secret, VaultError> {
        let entry = self.entry(name)?;
        decrypt(&self.keys, entry)
    }

    /// Adds an entry; its name must be new.
    pub fn add(&mut self, name: &str, secret: Secret) -> Result<EntryInfo, VaultError> {
        check_name(name)?;
        secret.validate()?;
        let now = mandate_core::clock::rfc3339_ms(self.clock.now_ms());
        let id = uuid::Uuid::new_v4().to_string();
        let entry = self.mutate(|document, keys| {
            if document.entries.iter().any(|e| e.name == name) {
                return Err(VaultError::DuplicateEntry(name.to_owned()));
            }
            if document.entries.len() >= MAX_ENTRIES {
                return Err(VaultError::Full);
            }
            let entry = encrypt(keys, id, name, &secret, now, None)?;
            document.entries.push(entry.clone());
            Ok(entry)
        })?;
        Ok(info(&entry))
    }

    /// Removes the named entry.
    pub fn remove(&mut self, name: &str) -> Result<(), VaultError> {
        self.mutate(|document, _| {
            let before = document.entries.len();
            document.entries.retain(|e| e.name != name);
            if document.entries.len() == before {
                return Err(VaultError::UnknownEntry(name.to_owned()));
            }
            Ok(())
        })
    }

    /// Replaces the entry's secret value (API key, client secret or refresh token) under a new
    /// data key; kind, parameters, id and creation time stay.
    pub fn rotate(&mut self, name: &str, new_value: SecretString) -> Result<EntryInfo, VaultError> {
        secret::check_secret_value(new_value.expose())?;
        let now = mandate_core::clock::rfc3339_ms(self.clock.now_ms());
        let entry = self.mutate(|document, keys| {
            let slot = document
                .entries
                .iter_mut()
                .find(|e| e.name == name)
                .ok_or_else(|| VaultError::UnknownEntry(name.to_owned()))?;
            if !slot.kind.has_secret() {
                return Err(VaultError::InvalidSecret("a mandate_workload entry has no secret to rotate"));
            }
            let mut secret = decrypt(keys, slot)?;
            secret.value = Some(new_value);
            *slot = encrypt(keys, slot.id.clone(), name, &secret, slot.created.clone(), Some(now))?;
            Ok(slot.clone())
        })?;
        Ok(info(&entry))
    }

    /// Re-wraps every data key under a KEK from `new_key` (new salt for a passphrase); the
    /// entries' ciphertexts do not change.
    pub fn rekey(&mut self, new_key: &VaultKey, params: KdfParams) -> Result<(), VaultError> {
        new_key.check_strength()?;
        let new_kdf = Kdf::new_for(new_key, params)?;
        let new_keys = new_kdf.derive(new_key)?;
        let _lock = file::Lock::acquire(&self.path)?;
        let current = self.read_current()?;
        let mut entries = Vec::with_capacity(current.entries.len());
        for entry in &current.entries {
            let dek = self.keys.unwrap_dek(&entry.id, &entry.dek)?;
            entries.push(StoredEntry { dek: new_keys.wrap_dek(&entry.id, &dek)?, ..entry.clone() });
        }
        let document = Document { kdf: new_kdf, key_check: new_keys.key_check(), entries, ..current };
        file::write_atomic(&self.path, &serialize(&document, &new_keys)?)?;
        self.keys = new_keys;
        self.document = document;
        Ok(())
    }

    fn entry(&self, name: &str) -> Result<&StoredEntry, VaultError> {
        self.document.entries.iter().find(|e| e.name == name).ok_or_else(|| VaultError::UnknownEntry(name.to_owned()))
    }

    /// The file as it is now, verified with our keys.
    fn read_current(&self) -> Result<Document, VaultError> {
        let parsed = parse(&file::read(&self.path)?)?;
        if parsed.vault.kdf != self.document.kdf {
            return Err(VaultError::ChangedElsewhere);
        }
        verify(parsed, &self.keys).map_err(|e| match e {
            VaultError::WrongKey => VaultError::ChangedElsewhere,
            other => other,
        })
    }

    fn mutate<T>(
        &mut self,
        change: impl FnOnce(&mut Document, &Keys) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let _lock = file::Lock::acquire(&self.path)?;
        let mut document = self.read_current()?;
        let out = change(&mut document, &self.keys)?;
        file::write_atomic(&self.path, &serialize(&document, &self.keys)?)?;
        self.document = document;
        Ok(out)
    }
}

fn info(entry: &StoredEntry) -> EntryInfo {
    EntryInfo {
        id: entry.id.clone(),
        name: entry.name.clone(),
        kind: entry.kind.clone(),
        created: entry.created.clone(),
        rotated: entry.rotated.clone(),
    }
}

/// `[a-z0-9_.-]+(:[a-z0-9_.-]+)?`, at most [`MAX_NAME_LEN`] characters.
pub fn check_name(name: &str) -> Result<(), VaultError> {
    let part_ok = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    };
    let valid = name.len() <= MAX_NAME_LEN
        && match name.split_once(':') {
            Some((service, account)) => part_ok(service) && part_ok(account),
            None => part_ok(name),
        };
    if valid { Ok(()) } else { Err(VaultError::InvalidName(name.to_owned())) }
}

fn encrypt(
    keys: &Keys,
    id: String,
    name: &str,
    secret: &Secret,
    created: String,
    rotated: Option<String>,
) -> Result<StoredEntry, VaultError> {
    let dek = key::new_dek();
    let dek_key = key::dek_key(&dek)?;
    let seal_field = |field: &str, value: Option<&SecretString>| -> Result<Option<String>, VaultError> {
        value
            .map(|v| key::seal(&dek_key, &entry_aad(&id, name, &secret.kind, field)?, v.expose().as_bytes()))
            .transpose()
    };
    Ok(StoredEntry {
        value: seal_field("value", secret.value())?,
        client_secret: seal_field("client_secret", secret.client_secret())?,
        idp_client_secret: seal_field("idp_client_secret", secret.idp_client_secret())?,
        dek: keys.wrap_dek(&id, &dek)?,
        id,
        name: name.to_owned(),
        kind: secret.kind.clone(),
        created,
        rotated,
    })
}

fn decrypt(keys: &Keys, entry: &StoredEntry) -> Result<Secret, VaultError> {
    let dek = keys.unwrap_dek(&entry.id, &entry.dek)?;
    let dek_key = key::dek_key(&dek)?;
    let open_field = |field: &str, sealed: Option<&String>| -> Result<Option<SecretString>, VaultError> {
        let Some(sealed) = sealed else { return Ok(None) };
        let plain = key::open(&dek_key, &entry_aad(&entry.id, &entry.name, &entry.kind, field)?, sealed)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Tampered("a secret is not UTF-8"))?;
        Ok(Some(SecretString::from(Zeroizing::new(text))))
    };
    let secret = Secret {
        kind: entry.kind.clone(),
        value: open_field("value", entry.value.as_ref())?,
        client_secret: open_field("client_secret", entry.client_secret.as_ref())?,
        idp_client_secret: open_field("idp_client_secret", entry.idp_client_secret.as_ref())?,
    };
    secret.validate().map_err(|_| VaultError::Tampered("an entry's content does not match its kind"))?;
    Ok(secret)
}

/// The canonical bytes of the file: pretty JSON of the document and its MAC over the compact
/// JSON of the document.
fn serialize(document: &Document, keys: &Keys) -> Result<Vec<u8>, VaultError> {
    let body = serde_json::to_vec(document).map_err(|_| VaultError::Crypto)?;
    let file = VaultFile { vault: document.clone(), mac: keys.mac(&body) };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|_| VaultError::Crypto)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Parses the file; it must be exactly what [`serialize`] writes, so no byte can change
/// without detection (not even whitespace or an extra field).
fn parse(bytes: &[u8]) -> Result<VaultFile, VaultError> {
    let parsed: VaultFile =
        serde_json::from_slice(bytes).map_err(|_| VaultError::Tampered("not a valid vault document"))?;
    if parsed.vault.format != FORMAT {
        return Err(VaultError::Tampered("not a mandate vault"));
    }
    if parsed.vault.version != VERSION {
        return Err(VaultError::Tampered("unsupported format version"));
    }
    let mut canonical = serde_json::to_vec_pretty(&parsed).map_err(|_| VaultError::Crypto)?;
    canonical.push(b'\n');
    if canonical != bytes {
        return Err(VaultError::Tampered("the file is not in its canonical form"));
    }
    Ok(parsed)
}

/// Key check first (wrong key), then the MAC (tampering), then structural rules.
fn verify(parsed: VaultFile, keys: &Keys) -> Result<Document, VaultError> {
    if !keys.verify_key_check(&parsed.vault.key_check) {
        return Err(VaultError::WrongKey);
    }
    let body = serde_json::to_vec(&parsed.vault).map_err(|_| VaultError::Crypto)?;
    if !keys.verify_mac(&body, &parsed.mac) {
        return Err(VaultError::Tampered("the document MAC does not verify"));
    }
    let document = parsed.vault;
    if document.entries.len() > MAX_ENTRIES {
        return Err(VaultError::Tampered("too many entries"));
    }
    let mut names = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for entry in &document.entries {
        if check_name(&entry.name).is_err() || !names.insert(&entry.name) || !ids.insert(&entry.id) {
            return Err(VaultError::Tampered("an entry name or id is invalid or repeated"));
        }
    }
    Ok(document)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_connection_grammar() {
        for ok in ["github", "github:work", "a.b-c_d:x9", &"a".repeat(MAX_NAME_LEN)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "GitHub", "github:", ":work", "a:b:c", "git hub", "gh/work", &"a".repeat(MAX_NAME_LEN + 1)] {
            assert!(matches!(check_name(bad), Err(VaultError::InvalidName(_))), "{bad}");
        }
    }

    /// Even with a valid MAC, a ciphertext only opens in the entry it was sealed for.
    #[test]
    fn ciphertexts_are_bound_to_their_entry() {
        let dir = tempfile::tempdir().unwrap();
        let key = VaultKey::passphrase(Zeroizing::new("a long passphrase".into())).unwrap();
        let options = VaultOptions { kdf: KdfParams { m_kib: 8 * 1024, t: 1, p: 1 }, ..VaultOptions::default() };
        let mut vault = Vault::create_with(&dir.path().join("v.json"), &key, &options).unwrap();
        vault.add("a", Secret::api_key(SecretString::new("first"))).unwrap();
        vault.add("b", Secret::api_key(SecretString::new("second"))).unwrap();
        let (a, b) = (vault.document.entries[0].clone(), vault.document.entries[1].clone());
        // Same data key, other entry's name: the AAD differs.
        vault.document.entries[1].value = a.value.clone();
        vault.document.entries[1].dek = a.dek.clone();
        assert!(matches!(vault.get("b"), Err(VaultError::Tampered(_))));
        // Another entry's wrapped data key: bound to the entry id.
        vault.document.entries[1] = StoredEntry { dek: a.dek, ..b };
        assert!(matches!(vault.get("b"), Err(VaultError::Tampered(_))));
    }

    #[test]
    fn secret_debug_output_hides_the_value() {
        let secret = Secret::api_key(SecretString::new("sk-live-0123456789"));
        assert!(!format!("{secret:?}").contains("sk-live"));
        assert!(!format!("{:?}", VaultKey::Passphrase(SecretString::new("hunter22"))).contains("hunter22"));
    }
}
