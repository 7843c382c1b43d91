//! Opening a data directory: the key-encryption key, the store, the signing keys, the audit
//! writer and (for `serve`) the admin credential. First use creates each of them.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mandate_audit::CheckpointPolicy;
use mandate_authz::{Authz, AuthzConfig};
use mandate_core::{AuditEvent, SystemClock, TrustDomain};
use mandate_crypto::{Alg, Kek, hash_secret, random_token};
use mandate_store::Mutation;

use crate::config::Settings;

const KEK_FILE: &str = "kek";
const ADMIN_TOKEN_FILE: &str = "admin-token";
const SETTING_ADMIN_HASH: &str = "admin_token_sha256";
const SETTING_AUDIT_ORIGIN: &str = "audit_origin";

/// Opens (initialising on first use) everything `authz` needs.
pub async fn open(settings: &Settings, issuer: String) -> anyhow::Result<Authz> {
    mandate_crypto::init().context("crypto self-test")?;
    let data_dir = settings.data_dir();
    ensure_private_dir(&data_dir)?;
    let kek = load_kek(&data_dir)?;
    let store = mandate_store::open(&settings.database_url())
        .await
        .with_context(|| format!("opening database {}", redact_url(&settings.database_url())))?;
    let trust_domain = TrustDomain::parse(settings.trust_domain())?;
    let stored_origin = store.setting(SETTING_AUDIT_ORIGIN).await?;
    let origin = stored_origin.clone().unwrap_or_else(|| format!("{trust_domain}/audit"));
    let policy = CheckpointPolicy {
        every_events: settings.audit_checkpoint_events(),
        every: Duration::from_millis(settings.audit_checkpoint_ms()),
    };
    let access_token_alg = match settings.access_token_alg.as_deref() {
        None => Alg::EdDSA,
        Some(raw) => Alg::parse(raw).with_context(|| format!("access_token_alg {raw:?}: use EdDSA or ES256"))?,
    };
    let config = AuthzConfig {
        access_token_ttl_secs: settings.access_token_ttl_secs()?,
        access_token_alg,
        refresh_token_ttl_secs: settings.refresh_token_ttl_secs()?,
        key_publish_lead_secs: settings.key_publish_lead_secs()?,
        allow_insecure_federation: settings.allow_insecure_federation.unwrap_or(false),
        dpop_nonce_required: settings.dpop_nonce_required.unwrap_or(false),
        txn_token_ttl_secs: settings.txn_token_ttl_secs()?,
        dynamic_registration: settings.dynamic_registration.unwrap_or(true),
        client_id_metadata_documents: settings.client_id_metadata_documents.unwrap_or(true),
        ..AuthzConfig::new(issuer.trim_end_matches('/'), trust_domain)
    };
    let authz = Authz::start(store, kek, Arc::new(SystemClock), config, policy, &origin)
        .await
        .context("loading signing keys")?;
    if stored_origin.is_none() {
        let event = AuditEvent::allow("log.origin", "startup").with_detail(format!("origin={origin}"));
        let put = Mutation::PutSetting { key: SETTING_AUDIT_ORIGIN.into(), value: origin };
        authz.log.apply(put, event).await?.map_err(|e| anyhow::anyhow!("recording the log origin: {e}"))?;
    }
    Ok(authz)
}

/// The admin credential's hash, creating the credential on first start. The clear value is
/// written once to `<data-dir>/admin-token` (mode 0600) and printed; only its hash is stored.
pub async fn ensure_admin_credential(authz: &Authz, data_dir: &Path) -> anyhow::Result<(String, Option<String>)> {
    if let Some(hash) = authz.store.setting(SETTING_ADMIN_HASH).await? {
        return Ok((hash, None));
    }
    let token = random_token("mat_");
    let hash = hash_secret(&token);
    write_private_file(&data_dir.join(ADMIN_TOKEN_FILE), token.as_bytes())?;
    let event = AuditEvent::allow("admin.credential.create", "startup")
        .with_detail(format!("stored in {}", data_dir.join(ADMIN_TOKEN_FILE).display()));
    let put = Mutation::PutSetting { key: SETTING_ADMIN_HASH.into(), value: hash.clone() };
    authz.log.apply(put, event).await?.map_err(|e| anyhow::anyhow!("storing the admin credential: {e}"))?;
    Ok((hash, Some(token)))
}

fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The KEK from `MANDATE_KEK` (base64), else from `<data-dir>/kek`, created on first use.
fn load_kek(data_dir: &Path) -> anyhow::Result<Kek> {
    if let Ok(encoded) = std::env::var("MANDATE_KEK") {
        return Kek::from_base64(&encoded).context("MANDATE_KEK");
    }
    let path = data_dir.join(KEK_FILE);
    if path.exists() {
        let mode = fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} is readable by group or others (mode {:o}); run: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
        let encoded = zeroize::Zeroizing::new(fs::read_to_string(&path)?);
        return Kek::from_base64(&encoded).with_context(|| format!("reading {}", path.display()));
    }
    let (kek, encoded) = Kek::generate()?;
    write_private_file(&path, encoded.as_bytes())?;
    Ok(kek)
}

fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

/// A database URL with any password removed, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Activates the configured policy file (if any), loads the stored set and keeps it current:
/// changes made by `mandate policy set`, the admin API or another replica take effect within
/// a second. A configured file that does not validate stops the start.
pub async fn start_policies(settings: &Settings, authz: &Authz) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(path) = &settings.policy_file {
        let source = mandate_policy::read_policy_text(path)?;
        mandate_authz::policy::replace(authz, &source, &crate::commands::correlation())
            .await
            .with_context(|| format!("policy file {}", path.display()))?;
    }
    watch_policies(authz).await
}

/// Loads the stored policy set into `authz.policy` and keeps it current (see [`start_policies`]).
pub async fn watch_policies(authz: &Authz) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let loaded =
        mandate_authz::policy::sync(authz, &authz.policy, None).await.context("loading the stored policy set")?;
    Ok(mandate_authz::policy::spawn_reload(authz.clone(), Arc::clone(&authz.policy), loaded))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_url("/var/lib/mandate.db"), "/var/lib/mandate.db");
    }
}
