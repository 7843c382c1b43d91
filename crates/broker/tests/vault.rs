//! The vault file: round trips, wrong keys, tampering of any part of the document, rotation,
//! rekeying, concurrent handles and file permissions.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mandate_broker::vault::{
    ClientAuth, EntryKind, KdfParams, Secret, SecretString, Vault, VaultError, VaultKey, VaultOptions,
};
use serde_json::Value;
use zeroize::Zeroizing;

const PASSPHRASE: &str = "correct horse battery staple";
const GITHUB_KEY: &str = "ghp_live_0123456789abcdef";

/// Argon2id at its accepted minimum, so tests stay fast (production default is 64 MiB, t=3).
fn fast() -> VaultOptions {
    VaultOptions { kdf: KdfParams { m_kib: 8 * 1024, t: 1, p: 1 }, ..VaultOptions::default() }
}

fn key(text: &str) -> VaultKey {
    VaultKey::passphrase(Zeroizing::new(text.to_owned())).unwrap()
}

fn new_vault(dir: &Path) -> (PathBuf, Vault) {
    let path = dir.join("broker/vault.json");
    let vault = Vault::create_with(&path, &key(PASSPHRASE), &fast()).unwrap();
    (path, vault)
}

fn oauth_kind() -> EntryKind {
    EntryKind::OauthClient {
        token_endpoint: "https://as.example/oauth2/token".into(),
        client_id: "broker-client".into(),
        scope: Some("read".into()),
        resource: None,
        auth: ClientAuth::ClientSecretBasic,
    }
}

/// A vault with `github:work` (API key) and `as:main` (OAuth client).
fn populated(dir: &Path) -> PathBuf {
    let (path, mut vault) = new_vault(dir);
    vault.add("github:work", Secret::api_key(SecretString::new(GITHUB_KEY))).unwrap();
    vault.add("as:main", Secret::oauth_client(oauth_kind(), SecretString::new("client-secret-xyz"))).unwrap();
    path
}

fn open(path: &Path) -> Result<Vault, VaultError> {
    Vault::open(path, &key(PASSPHRASE))
}

fn edit_json(path: &Path, change: impl FnOnce(&mut Value)) {
    let mut doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    change(&mut doc);
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap();
    bytes.push(b'\n');
    std::fs::write(path, bytes).unwrap();
}

/// A change to the parsed vault document.
type Edit = Box<dyn Fn(&mut Value)>;

fn assert_tampered(result: Result<Vault, VaultError>) {
    match result {
        Err(VaultError::Tampered(_)) => {}
        other => panic!("expected Tampered, got {other:?}"),
    }
}

#[test]
fn entries_round_trip_and_the_file_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(GITHUB_KEY) && !text.contains("client-secret-xyz"));

    let vault = open(&path).unwrap();
    assert_eq!(vault.get("github:work").unwrap().value().unwrap().expose(), GITHUB_KEY);
    let oauth = vault.get("as:main").unwrap();
    assert_eq!(oauth.kind, oauth_kind());
    assert_eq!(oauth.value().unwrap().expose(), "client-secret-xyz");

    let list = vault.list();
    assert_eq!(list.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["github:work", "as:main"]);
    let listed = serde_json::to_string(&list).unwrap();
    assert!(!listed.contains(GITHUB_KEY) && !listed.contains("client-secret-xyz"));
    assert!(listed.contains("broker-client"), "non-secret parameters are listed");
    assert!(matches!(vault.get("github:personal"), Err(VaultError::UnknownEntry(_))));
}

#[test]
fn the_vault_file_and_directory_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_wrong_passphrase_is_refused_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    assert!(matches!(Vault::open(&path, &key("not the passphrase")), Err(VaultError::WrongKey)));
}

#[test]
fn key_file_vaults_need_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("vault.key");
    let file_key = VaultKey::create_key_file(&key_path).unwrap();
    assert_eq!(std::fs::read(&key_path).unwrap().len(), 32);
    assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(matches!(VaultKey::create_key_file(&key_path), Err(VaultError::AlreadyExists(_))));

    let path = dir.path().join("vault.json");
    let mut vault = Vault::create(&path, &file_key).unwrap();
    vault.add("github:work", Secret::api_key(SecretString::new(GITHUB_KEY))).unwrap();

    let reread = VaultKey::read_key_file(&key_path).unwrap();
    assert_eq!(Vault::open(&path, &reread).unwrap().get("github:work").unwrap().value().unwrap().expose(), GITHUB_KEY);
    assert!(matches!(open(&path), Err(VaultError::KeyMismatch(_))));

    let other_key = dir.path().join("other.key");
    assert!(matches!(Vault::open(&path, &VaultKey::create_key_file(&other_key).unwrap()), Err(VaultError::WrongKey)));
    std::fs::write(&other_key, [0u8; 31]).unwrap();
    assert!(matches!(VaultKey::read_key_file(&other_key), Err(VaultError::InvalidKey(_))));
}

#[test]
fn flipping_any_entry_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let original = std::fs::read(&path).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    // One byte inside each of: a name, a ciphertext, a wrapped key, a timestamp, the MAC.
    let doc: Value = serde_json::from_str(&text).unwrap();
    let entry = &doc["vault"]["entries"][0];
    let targets = [
        "github:work".to_owned(),
        entry["value"].as_str().unwrap()[20..30].to_owned(),
        entry["dek"].as_str().unwrap()[20..30].to_owned(),
        entry["created"].as_str().unwrap().to_owned(),
        doc["mac"].as_str().unwrap()[5..15].to_owned(),
    ];
    for target in targets {
        let at = text.find(&target).unwrap() + 2;
        let mut bytes = original.clone();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&path, &bytes).unwrap();
        assert_tampered(open(&path));
    }
    // Any byte at all, even whitespace or a line end.
    let mut bytes = original.clone();
    bytes.insert(1, b' ');
    std::fs::write(&path, &bytes).unwrap();
    assert_tampered(open(&path));
    std::fs::write(&path, &original).unwrap();
    assert!(open(&path).is_ok());
}

#[test]
fn deleting_reordering_renaming_or_retyping_entries_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let original = std::fs::read(&path).unwrap();
    let edits: Vec<Edit> = vec![
        Box::new(|d| {
            d["vault"]["entries"].as_array_mut().unwrap().remove(1);
        }),
        Box::new(|d| d["vault"]["entries"].as_array_mut().unwrap().reverse()),
        Box::new(|d| d["vault"]["entries"][0]["name"] = "github:personal".into()),
        Box::new(|d| d["vault"]["entries"][1]["kind"]["client_id"] = "attacker".into()),
        Box::new(|d| d["vault"]["entries"][1]["kind"]["token_endpoint"] = "https://evil.example/token".into()),
        Box::new(|d| {
            // Move one entry's ciphertext to another.
            let v = d["vault"]["entries"][1]["value"].clone();
            d["vault"]["entries"][0]["value"] = v;
        }),
        Box::new(|d| d["vault"]["entries"][0]["extra"] = "field".into()),
        Box::new(|d| d["vault"]["version"] = 2.into()),
    ];
    for edit in edits {
        std::fs::write(&path, &original).unwrap();
        edit_json(&path, edit);
        assert_tampered(open(&path));
    }
}

#[test]
fn a_header_asking_for_absurd_argon2_costs_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let original = std::fs::read(&path).unwrap();
    for (field, value) in [("m_kib", 100 * 1024 * 1024), ("t", 1_000_000), ("p", 64), ("m_kib", 8)] {
        std::fs::write(&path, &original).unwrap();
        edit_json(&path, |d| d["vault"]["kdf"][field] = value.into());
        assert_tampered(open(&path));
    }
    std::fs::write(&path, &original).unwrap();
    edit_json(&path, |d| d["vault"]["kdf"]["salt"] = "c2hvcnQ=".into());
    assert_tampered(open(&path));
}

#[test]
fn rotation_replaces_the_secret_and_keeps_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let before: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut vault = open(&path).unwrap();
    let info = vault.rotate("github:work", SecretString::new("ghp_rotated_value")).unwrap();
    let old = &before["vault"]["entries"][0];
    assert_eq!(info.id, old["id"].as_str().unwrap());
    assert_eq!(info.created, old["created"].as_str().unwrap());
    assert!(info.rotated.is_some());

    let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_ne!(after["vault"]["entries"][0]["dek"], old["dek"], "a new data key");
    let reopened = open(&path).unwrap();
    assert_eq!(reopened.get("github:work").unwrap().value().unwrap().expose(), "ghp_rotated_value");
    assert_eq!(reopened.get("as:main").unwrap().value().unwrap().expose(), "client-secret-xyz");
    assert!(matches!(vault.rotate("nope", SecretString::new("x")), Err(VaultError::UnknownEntry(_))));
    assert!(matches!(vault.rotate("github:work", SecretString::new("a\nb")), Err(VaultError::InvalidSecret(_))));
}

#[test]
fn removal_forgets_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let mut vault = open(&path).unwrap();
    vault.remove("github:work").unwrap();
    assert!(matches!(vault.remove("github:work"), Err(VaultError::UnknownEntry(_))));
    let reopened = open(&path).unwrap();
    assert_eq!(reopened.list().len(), 1);
    assert!(matches!(reopened.get("github:work"), Err(VaultError::UnknownEntry(_))));
}

#[test]
fn invalid_names_secrets_and_parameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, mut vault) = new_vault(dir.path());
    let api = |v: &str| Secret::api_key(SecretString::new(v));
    assert!(matches!(vault.add("GitHub:Work", api("k")), Err(VaultError::InvalidName(_))));
    assert!(matches!(vault.add("a:b:c", api("k")), Err(VaultError::InvalidName(_))));
    assert!(matches!(vault.add("github", api("")), Err(VaultError::InvalidSecret(_))));
    assert!(matches!(vault.add("github", api("key\r\nX-Injected: 1")), Err(VaultError::InvalidSecret(_))));
    assert!(matches!(vault.add("github", api(&"k".repeat(17 * 1024))), Err(VaultError::InvalidSecret(_))));
    let kind_with = |endpoint: &str| EntryKind::OauthClient {
        token_endpoint: endpoint.into(),
        client_id: "c".into(),
        scope: None,
        resource: None,
        auth: ClientAuth::ClientSecretPost,
    };
    for endpoint in ["http://as.example/token", "ftp://as.example", "https://user@as.example/t", "https:///t"] {
        let result = vault.add("as", Secret::oauth_client(kind_with(endpoint), SecretString::new("s")));
        assert!(matches!(result, Err(VaultError::InvalidParams(_))), "{endpoint}");
    }
    vault.add("as", Secret::oauth_client(kind_with("http://127.0.0.1:9/token"), SecretString::new("s"))).unwrap();
    let workload = EntryKind::MandateWorkload {
        token_endpoint: "https://mandate.example/oauth2/token".into(),
        resource: "https://api.example".into(),
        scope: None,
        audience: None,
        spiffe_id: Some("not-a-spiffe-id".into()),
    };
    assert!(matches!(vault.add("m", Secret::mandate_workload(workload)), Err(VaultError::InvalidParams(_))));
    // A secret for a kind without one, or a missing one.
    assert!(matches!(vault.add("x", Secret::mandate_workload(EntryKind::ApiKey)), Err(VaultError::InvalidSecret(_))));
    vault.add("github", api("k")).unwrap();
    assert!(matches!(vault.add("github", api("k2")), Err(VaultError::DuplicateEntry(_))));
}

#[test]
fn weak_passphrases_and_existing_files_are_refused_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.json");
    assert!(matches!(Vault::create_with(&path, &key("short"), &fast()), Err(VaultError::InvalidKey(_))));
    assert!(VaultKey::passphrase(Zeroizing::new(String::new())).is_err());
    assert!(VaultKey::passphrase(Zeroizing::new("\n".into())).is_err());
    Vault::create_with(&path, &key(PASSPHRASE), &fast()).unwrap();
    assert!(matches!(Vault::create_with(&path, &key(PASSPHRASE), &fast()), Err(VaultError::AlreadyExists(_))));
    assert!(matches!(open(&dir.path().join("missing.json")), Err(VaultError::NotFound(_))));
}

#[test]
fn rekeying_rewraps_under_the_new_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let mut vault = open(&path).unwrap();
    vault.rekey(&key("a brand new passphrase"), KdfParams { m_kib: 8 * 1024, t: 1, p: 1 }).unwrap();
    assert!(matches!(open(&path), Err(VaultError::WrongKey)));
    let reopened = Vault::open(&path, &key("a brand new passphrase")).unwrap();
    assert_eq!(reopened.get("github:work").unwrap().value().unwrap().expose(), GITHUB_KEY);
    assert!(matches!(vault.rekey(&key("short"), KdfParams::default()), Err(VaultError::InvalidKey(_))));
}

#[test]
fn two_handles_keep_each_others_changes_and_notice_a_rekey() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let mut first = open(&path).unwrap();
    let mut second = open(&path).unwrap();
    first.add("slack:team", Secret::api_key(SecretString::new("xoxb-1"))).unwrap();
    second.add("openai:main", Secret::api_key(SecretString::new("sk-2"))).unwrap();
    let names: Vec<String> = open(&path).unwrap().list().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["github:work", "as:main", "slack:team", "openai:main"]);

    assert!(matches!(first.get("openai:main"), Err(VaultError::UnknownEntry(_))));
    first.reload().unwrap();
    assert_eq!(first.get("openai:main").unwrap().value().unwrap().expose(), "sk-2");

    first.rekey(&key("another passphrase!"), KdfParams { m_kib: 8 * 1024, t: 1, p: 1 }).unwrap();
    assert!(matches!(second.remove("slack:team"), Err(VaultError::ChangedElsewhere)));
}

#[test]
fn id_jag_entries_keep_three_secrets_and_validate_both_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut vault) = new_vault(dir.path());
    let kind = |idp: &str| EntryKind::IdJag {
        idp_token_endpoint: idp.into(),
        idp_client_id: "idp-client".into(),
        idp_auth: ClientAuth::ClientSecretBasic,
        audience: "https://as.example".into(),
        resource: None,
        scope: None,
        token_endpoint: "https://as.example/oauth2/token".into(),
        client_id: "as-client".into(),
        auth: ClientAuth::ClientSecretPost,
    };
    let secrets = |k: EntryKind| {
        Secret::id_jag(k, SecretString::new("id.token.jwt"), SecretString::new("as-s"), SecretString::new("idp-s"))
    };
    let refused = vault.add("crm:alice", secrets(kind("http://idp.example/token")));
    assert!(matches!(refused, Err(VaultError::InvalidParams(_))));
    // A refresh-token entry may not smuggle in an IdP secret, nor an id_jag go without one.
    let partial = Secret::refresh_token(kind("https://idp.example/token"), SecretString::new("x"), None);
    assert!(matches!(vault.add("crm:alice", partial), Err(VaultError::InvalidSecret(_))));

    vault.add("crm:alice", secrets(kind("https://idp.example/token"))).unwrap();
    vault.rotate("crm:alice", SecretString::new("new.id.token")).unwrap();
    let entry = open(&path).unwrap().get("crm:alice").unwrap();
    assert_eq!(entry.value().unwrap().expose(), "new.id.token");
    assert_eq!(entry.client_secret().unwrap().expose(), "as-s");
    assert_eq!(entry.idp_client_secret().unwrap().expose(), "idp-s");
}
