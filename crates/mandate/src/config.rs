//! Settings: built-in defaults, overridden by a TOML file, then `MANDATE_*` environment
//! variables, then command-line flags. Unknown keys in the file or unknown `MANDATE_*`
//! variables are errors, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Longest access-token lifetime an operator may configure.
pub use mandate_authz::MAX_ACCESS_TOKEN_TTL_SECS;
const MIN_ACCESS_TOKEN_TTL_SECS: i64 = 30;
const DEFAULT_REFRESH_TOKEN_TTL_SECS: i64 = 14 * 86_400;
const MAX_REFRESH_TOKEN_TTL_SECS: i64 = 365 * 86_400;
/// SVID lifetimes: a few seconds (tests, demos) up to an hour, because a retired signing key
/// stays published for at most [`MAX_ACCESS_TOKEN_TTL_SECS`] and must outlive what it signed.
const MIN_SVID_TTL_SECS: i64 = 2;
const MAX_SVID_TTL_SECS: i64 = MAX_ACCESS_TOKEN_TTL_SECS;

/// Environment variables that are not config keys but are still ours.
const OTHER_ENV: &[&str] = &[
    "MANDATE_KEK",
    "MANDATE_CONFIG",
    "MANDATE_TEST_POSTGRES",
    "MANDATE_BIN",
    "MANDATE_GATEWAY_CLIENT_SECRET",
    // The broker vault's passphrase, and the new one for `mandate broker vault rekey`.
    "MANDATE_VAULT_PASSPHRASE",
    "MANDATE_VAULT_NEW_PASSPHRASE",
];

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the SQLite database, the key-encryption key and the admin credential live.
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// Public issuer URL; defaults to `http://<listen address>`.
    pub issuer: Option<String>,
    /// `postgres://…` for PostgreSQL; SQLite in the data directory when unset.
    pub database: Option<String>,
    pub trust_domain: Option<String>,
    pub access_token_ttl_secs: Option<i64>,
    /// Refresh-token lifetime (authorization code flow); each rotation starts a new one.
    pub refresh_token_ttl_secs: Option<i64>,
    /// `EdDSA` (default) or `ES256`.
    pub access_token_alg: Option<String>,
    /// How long a rotated-in key is published before it signs.
    pub key_publish_lead_secs: Option<i64>,
    pub audit_checkpoint_events: Option<u64>,
    pub audit_checkpoint_ms: Option<u64>,
    /// Log filter, e.g. `info` or `mandate=debug`.
    pub log: Option<String>,
    /// `text` (default) or `json`: one JSON object per line, with the request id of the
    /// request a line belongs to.
    pub log_format: Option<LogFormat>,
    /// Workload identity federation and Client ID Metadata Documents may use http:// and
    /// internal addresses (loopback tests only).
    pub allow_insecure_federation: Option<bool>,
    /// Serve `POST /oauth2/register` (RFC 7591); default true.
    pub dynamic_registration: Option<bool>,
    /// Accept `https://` client ids as Client ID Metadata Documents; default true.
    pub client_id_metadata_documents: Option<bool>,
    /// DPoP proofs at the token endpoint must carry a server nonce (RFC 9449 §8); default false.
    pub dpop_nonce_required: Option<bool>,
    /// Unix socket path of the SPIFFE Workload API; not served when unset.
    pub workload_socket: Option<PathBuf>,
    /// X.509-SVID lifetime (default 3600, at most 3600); Workload API streams renew at half of it.
    pub x509_svid_ttl_secs: Option<i64>,
    /// JWT-SVID lifetime (default 300, at most 3600).
    pub jwt_svid_ttl_secs: Option<i64>,
    /// Txn-Token lifetime (default 60, at most 300; never beyond the subject token).
    pub txn_token_ttl_secs: Option<i64>,
    /// PEM certificate of an operator root CA that signs Mandate's SPIFFE CA as an intermediate
    /// (with `spiffe_upstream_ca_key`); the CA is self-signed when unset.
    pub spiffe_upstream_ca_cert: Option<PathBuf>,
    /// A Cedar policy file (or directory of `*.cedar` files) activated at start; the server
    /// refuses to start if it does not validate. Unset: the stored set (if any) stays active.
    pub policy_file: Option<PathBuf>,
    /// PEM private key of `spiffe_upstream_ca_cert`.
    pub spiffe_upstream_ca_key: Option<PathBuf>,
}

impl Settings {
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).context("invalid config file")
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Reads `MANDATE_<KEY>` variables from `vars` (the process environment in production, a
    /// map in tests).
    pub fn from_env<I>(vars: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut table = toml::Table::new();
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("MANDATE_") else {
                continue;
            };
            if OTHER_ENV.contains(&name.as_str()) {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let typed = match key.as_str() {
                "access_token_ttl_secs"
                | "refresh_token_ttl_secs"
                | "key_publish_lead_secs"
                | "audit_checkpoint_events"
                | "audit_checkpoint_ms"
                | "x509_svid_ttl_secs"
                | "jwt_svid_ttl_secs"
                | "txn_token_ttl_secs" => {
                    toml::Value::Integer(value.trim().parse().with_context(|| format!("{name} must be an integer"))?)
                }
                "allow_insecure_federation"
                | "dynamic_registration"
                | "client_id_metadata_documents"
                | "dpop_nonce_required" => {
                    toml::Value::Boolean(value.trim().parse().with_context(|| format!("{name} must be true or false"))?)
                }
                _ => toml::Value::String(value),
            };
            table.insert(key, typed);
        }
        table.try_into().context("unknown or invalid MANDATE_* environment variable")
    }

    /// `other`'s values win where set.
    pub fn overlay(self, other: Self) -> Self {
        Self {
            data_dir: other.data_dir.or(self.data_dir),
            listen: other.listen.or(self.listen),
            issuer: other.issuer.or(self.issuer),
            database: other.database.or(self.database),
            trust_domain: other.trust_domain.or(self.trust_domain),
            access_token_ttl_secs: other.access_token_ttl_secs.or(self.access_token_ttl_secs),
            refresh_token_ttl_secs: other.refresh_token_ttl_secs.or(self.refresh_token_ttl_secs),
            access_token_alg: other.access_token_alg.or(self.access_token_alg),
            key_publish_lead_secs: other.key_publish_lead_secs.or(self.key_publish_lead_secs),
            audit_checkpoint_events: other.audit_checkpoint_events.or(self.audit_checkpoint_events),
            audit_checkpoint_ms: other.audit_checkpoint_ms.or(self.audit_checkpoint_ms),
            log: other.log.or(self.log),
            log_format: other.log_format.or(self.log_format),
            allow_insecure_federation: other.allow_insecure_federation.or(self.allow_insecure_federation),
            dynamic_registration: other.dynamic_registration.or(self.dynamic_registration),
            client_id_metadata_documents: other.client_id_metadata_documents.or(self.client_id_metadata_documents),
            dpop_nonce_required: other.dpop_nonce_required.or(self.dpop_nonce_required),
            workload_socket: other.workload_socket.or(self.workload_socket),
            x509_svid_ttl_secs: other.x509_svid_ttl_secs.or(self.x509_svid_ttl_secs),
            jwt_svid_ttl_secs: other.jwt_svid_ttl_secs.or(self.jwt_svid_ttl_secs),
            txn_token_ttl_secs: other.txn_token_ttl_secs.or(self.txn_token_ttl_secs),
            spiffe_upstream_ca_cert: other.spiffe_upstream_ca_cert.or(self.spiffe_upstream_ca_cert),
            spiffe_upstream_ca_key: other.spiffe_upstream_ca_key.or(self.spiffe_upstream_ca_key),
            policy_file: other.policy_file.or(self.policy_file),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("mandate-data"))
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn database_url(&self) -> String {
        self.database.clone().unwrap_or_else(|| self.data_dir().join("mandate.db").to_string_lossy().into_owned())
    }

    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or("mandate.local")
    }

    pub fn access_token_ttl_secs(&self) -> anyhow::Result<i64> {
        let ttl = self.access_token_ttl_secs.unwrap_or(300);
        if !(MIN_ACCESS_TOKEN_TTL_SECS..=MAX_ACCESS_TOKEN_TTL_SECS).contains(&ttl) {
            bail!("access_token_ttl_secs must be between {MIN_ACCESS_TOKEN_TTL_SECS} and {MAX_ACCESS_TOKEN_TTL_SECS}");
        }
        Ok(ttl)
    }

    /// Default 14 days; from a minute (tests) to a year.
    pub fn refresh_token_ttl_secs(&self) -> anyhow::Result<i64> {
        let ttl = self.refresh_token_ttl_secs.unwrap_or(DEFAULT_REFRESH_TOKEN_TTL_SECS);
        if !(60..=MAX_REFRESH_TOKEN_TTL_SECS).contains(&ttl) {
            bail!("refresh_token_ttl_secs must be between 60 and {MAX_REFRESH_TOKEN_TTL_SECS}");
        }
        Ok(ttl)
    }

    /// Default 60 s; from 1 s to 300 s (Txn-Tokens live minutes or less).
    pub fn txn_token_ttl_secs(&self) -> anyhow::Result<i64> {
        use mandate_authz::txn_token::{DEFAULT_TTL_SECS, MAX_TTL_SECS};
        let ttl = self.txn_token_ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            bail!("txn_token_ttl_secs must be between 1 and {MAX_TTL_SECS}");
        }
        Ok(ttl)
    }

    /// SVID lifetimes; the CA's other settings keep their defaults.
    pub fn spiffe_config(&self) -> anyhow::Result<mandate_workload::ca::SpiffeConfig> {
        let defaults = mandate_workload::ca::SpiffeConfig::default();
        let x509 = self.x509_svid_ttl_secs.unwrap_or(defaults.x509_svid_ttl_secs);
        if !(MIN_SVID_TTL_SECS..=MAX_SVID_TTL_SECS).contains(&x509) {
            bail!("x509_svid_ttl_secs must be between {MIN_SVID_TTL_SECS} and {MAX_SVID_TTL_SECS}");
        }
        let jwt = self.jwt_svid_ttl_secs.unwrap_or(defaults.jwt_svid_ttl_secs);
        if !(MIN_SVID_TTL_SECS..=MAX_SVID_TTL_SECS).contains(&jwt) {
            bail!("jwt_svid_ttl_secs must be between {MIN_SVID_TTL_SECS} and {MAX_SVID_TTL_SECS}");
        }
        Ok(mandate_workload::ca::SpiffeConfig { x509_svid_ttl_secs: x509, jwt_svid_ttl_secs: jwt, ..defaults })
    }

    pub fn key_publish_lead_secs(&self) -> anyhow::Result<i64> {
        let lead = self.key_publish_lead_secs.unwrap_or(120);
        if lead < 0 {
            bail!("key_publish_lead_secs must not be negative");
        }
        Ok(lead)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn layers_override_in_order() {
        let file = Settings::from_toml(
            "listen = \"127.0.0.1:9000\"\ntrust_domain = \"file.example\"\naccess_token_ttl_secs = 600",
        )
        .unwrap();
        let from_env = Settings::from_env(env(&[("MANDATE_TRUST_DOMAIN", "env.example"), ("PATH", "/bin")])).unwrap();
        let flags = Settings { listen: Some("127.0.0.1:7000".parse().unwrap()), ..Settings::default() };
        let merged = Settings::default().overlay(file).overlay(from_env).overlay(flags);
        assert_eq!(merged.listen(), "127.0.0.1:7000".parse().unwrap());
        assert_eq!(merged.trust_domain(), "env.example");
        assert_eq!(merged.access_token_ttl_secs().unwrap(), 600);
        assert_eq!(Settings::default().access_token_ttl_secs().unwrap(), 300);
    }

    #[test]
    fn insecure_federation_is_a_boolean_off_by_default() {
        assert_eq!(Settings::default().allow_insecure_federation, None);
        let on = Settings::from_env(env(&[("MANDATE_ALLOW_INSECURE_FEDERATION", "true")])).unwrap();
        assert_eq!(on.allow_insecure_federation, Some(true));
        assert!(Settings::from_env(env(&[("MANDATE_ALLOW_INSECURE_FEDERATION", "yes")])).is_err());
        let file = Settings::from_toml("allow_insecure_federation = false").unwrap();
        assert_eq!(file.overlay(on).allow_insecure_federation, Some(true));
    }

    #[test]
    fn client_identification_settings_are_booleans() {
        assert_eq!(Settings::default().dynamic_registration, None);
        let off = Settings::from_env(env(&[
            ("MANDATE_DYNAMIC_REGISTRATION", "false"),
            ("MANDATE_CLIENT_ID_METADATA_DOCUMENTS", "false"),
        ]))
        .unwrap();
        assert_eq!((off.dynamic_registration, off.client_id_metadata_documents), (Some(false), Some(false)));
        assert!(Settings::from_env(env(&[("MANDATE_DYNAMIC_REGISTRATION", "off")])).is_err());
        let file = Settings::from_toml("dynamic_registration = true\nclient_id_metadata_documents = true").unwrap();
        assert_eq!(file.overlay(off).dynamic_registration, Some(false));
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(Settings::default().log_format, None);
        let json = Settings::from_env(env(&[("MANDATE_LOG_FORMAT", "json")])).unwrap();
        assert_eq!(json.log_format, Some(LogFormat::Json));
        let file = Settings::from_toml("log_format = \"text\"").unwrap();
        assert_eq!(file.clone().overlay(json).log_format, Some(LogFormat::Json));
        assert_eq!(file.log_format, Some(LogFormat::Text));
        assert!(Settings::from_env(env(&[("MANDATE_LOG_FORMAT", "yaml")])).is_err());
        assert!(Settings::from_toml("log_format = \"JSON\"").is_err());
    }

    #[test]
    fn dpop_nonces_are_off_unless_turned_on() {
        assert_eq!(Settings::default().dpop_nonce_required, None);
        let on = Settings::from_env(env(&[("MANDATE_DPOP_NONCE_REQUIRED", "true")])).unwrap();
        assert_eq!(on.dpop_nonce_required, Some(true));
        assert!(Settings::from_env(env(&[("MANDATE_DPOP_NONCE_REQUIRED", "1")])).is_err());
    }

    #[test]
    fn workload_api_settings_come_from_env_and_are_bounded() {
        let from_env = Settings::from_env(env(&[
            ("MANDATE_WORKLOAD_SOCKET", "/run/mandate/workload.sock"),
            ("MANDATE_X509_SVID_TTL_SECS", "4"),
        ]))
        .unwrap();
        assert_eq!(from_env.workload_socket.as_deref(), Some(Path::new("/run/mandate/workload.sock")));
        let spiffe = from_env.spiffe_config().unwrap();
        assert_eq!((spiffe.x509_svid_ttl_secs, spiffe.jwt_svid_ttl_secs), (4, 300));
        assert_eq!(Settings::default().spiffe_config().unwrap().x509_svid_ttl_secs, 3600);
        for bad in [Some(1), Some(86_400)] {
            assert!(Settings { x509_svid_ttl_secs: bad, ..Settings::default() }.spiffe_config().is_err());
            assert!(Settings { jwt_svid_ttl_secs: bad, ..Settings::default() }.spiffe_config().is_err());
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Settings::from_toml("listne = \"127.0.0.1:1\"").is_err());
        assert!(Settings::from_env(env(&[("MANDATE_LISTNE", "x")])).is_err());
        assert!(Settings::from_env(env(&[("MANDATE_ACCESS_TOKEN_TTL_SECS", "soon")])).is_err());
        assert!(Settings::from_env(env(&[("MANDATE_KEK", "x"), ("MANDATE_CONFIG", "y")])).is_ok());
        let too_long = Settings { access_token_ttl_secs: Some(86_400), ..Settings::default() };
        assert!(too_long.access_token_ttl_secs().is_err());
        assert_eq!(Settings::default().refresh_token_ttl_secs().unwrap(), 14 * 86_400);
        assert_eq!(Settings::default().txn_token_ttl_secs().unwrap(), 60);
        let txn = Settings::from_env(env(&[("MANDATE_TXN_TOKEN_TTL_SECS", "120")])).unwrap();
        assert_eq!(txn.txn_token_ttl_secs().unwrap(), 120);
        for bad in [0, 301] {
            assert!(Settings { txn_token_ttl_secs: Some(bad), ..Settings::default() }.txn_token_ttl_secs().is_err());
        }
        let refresh = Settings::from_env(env(&[("MANDATE_REFRESH_TOKEN_TTL_SECS", "3600")])).unwrap();
        assert_eq!(refresh.refresh_token_ttl_secs().unwrap(), 3600);
        for bad in [59, 366 * 86_400] {
            assert!(
                Settings { refresh_token_ttl_secs: Some(bad), ..Settings::default() }.refresh_token_ttl_secs().is_err()
            );
        }
    }
}
