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

/// Environment variables that are ours but are not settings, with what they are for.
pub const OTHER_ENV: &[EnvDoc] = &[
    EnvDoc {
        name: "MANDATE_KEK",
        meaning: "the key-encryption key (32 bytes, standard base64). Without it, Mandate uses \
                  `<data_dir>/kek`, creating it (mode 0600) on first start and refusing to start if it is \
                  readable by group or others. Replicas sharing a PostgreSQL database must share the KEK.",
    },
    EnvDoc { name: "MANDATE_CONFIG", meaning: "the TOML config file, like `--config FILE`." },
    EnvDoc {
        name: "MANDATE_GATEWAY_CLIENT_SECRET",
        meaning: "`mandate gateway` in remote mode: the gateway client's secret (or `--client-secret-file`).",
    },
    EnvDoc {
        name: "MANDATE_VAULT_PASSPHRASE",
        meaning: "the broker vault's passphrase (or `--passphrase-file`) ([broker-vault.md](broker-vault.md)).",
    },
    EnvDoc { name: "MANDATE_VAULT_NEW_PASSPHRASE", meaning: "the new passphrase for `mandate broker vault rekey`." },
    EnvDoc { name: "MANDATE_TEST_POSTGRES", meaning: "used by the test scripts; ignored by Mandate." },
    EnvDoc { name: "MANDATE_BIN", meaning: "used by the test and bench scripts; ignored by Mandate." },
    EnvDoc {
        name: "MANDATE_ARTIFACTS",
        meaning: "where the browser tests save their screenshots; ignored by Mandate.",
    },
];

/// One environment variable outside the settings.
#[derive(Debug)]
pub struct EnvDoc {
    pub name: &'static str,
    /// Markdown; links are relative to `docs/`.
    pub meaning: &'static str,
}

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

/// What a `MANDATE_<KEY>` value is parsed as before it joins the other layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Integer,
    Boolean,
    Text,
}

/// Ties each setting's Rust type to the way its environment variable is read.
trait SettingValue {
    const KIND: ValueKind;
}

macro_rules! setting_kinds {
    ($kind:ident: $($ty:ty),+) => { $(impl SettingValue for $ty { const KIND: ValueKind = ValueKind::$kind; })+ };
}
setting_kinds!(Integer: i64, u64);
setting_kinds!(Boolean: bool);
setting_kinds!(Text: String, PathBuf, SocketAddr, LogFormat);

/// One row of the configuration reference (`mandate config reference`, docs/configuration.md).
#[derive(Debug)]
pub struct SettingDoc {
    /// The TOML key; the environment variable is `MANDATE_<KEY>`.
    pub key: &'static str,
    /// The field's doc comment, one entry per line: markdown, links relative to `docs/`.
    pub doc: &'static [&'static str],
    pub kind: ValueKind,
    /// Markdown, e.g. "300" or "unset (not served)".
    pub default: &'static str,
    /// Accepted values: `lo..=hi` for bounded integers (checked against the code by tests),
    /// or a short markdown phrase.
    pub values: Option<&'static str>,
    /// The command-line flag setting the same value, if any.
    pub flag: Option<&'static str>,
}

impl SettingDoc {
    pub fn env_var(&self) -> String {
        format!("MANDATE_{}", self.key.to_ascii_uppercase())
    }

    /// The doc comment as one line of markdown.
    pub fn meaning(&self) -> String {
        self.doc.iter().map(|line| line.trim()).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ")
    }
}

/// Declares every setting once: the `Settings` struct, its `overlay`, and [`REFERENCE`] all
/// come from this list, so the documentation cannot name a key the parser does not know.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $key:ident: $ty:ty {
            default: $default:literal,
            $(values: $values:literal,)?
            $(flag: $flag:literal,)?
        }
    )*) => {
        #[derive(Debug, Clone, Default, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $($(#[doc = $doc])* pub $key: Option<$ty>,)*
        }

        impl Settings {
            /// `other`'s values win where set.
            pub fn overlay(self, other: Self) -> Self {
                Self { $($key: other.$key.or(self.$key),)* }
            }
        }

        /// Every setting, in documentation order.
        pub const REFERENCE: &[SettingDoc] = &[$(
            SettingDoc {
                key: stringify!($key),
                doc: &[$($doc),*],
                kind: <$ty as SettingValue>::KIND,
                default: $default,
                values: settings!(@optional $($values)?),
                flag: settings!(@optional $($flag)?),
            },
        )*];
    };
    (@optional $text:literal) => { Some($text) };
    (@optional) => { None };
}

settings! {
    /// SQLite database, key-encryption key (`kek`), admin credential (`admin-token`).
    data_dir: PathBuf { default: "`mandate-data`", flag: "--data-dir", }
    /// HTTP listen address.
    listen: SocketAddr { default: "`127.0.0.1:8080`", flag: "serve --listen", }
    /// The `iss` of every token; set it to the public URL behind a TLS proxy.
    issuer: String { default: "`http://<listen address>`", flag: "serve --issuer", }
    /// `postgres://user@host/db` for PostgreSQL (several replicas share it).
    database: String { default: "SQLite in `data_dir`", flag: "--database", }
    /// SPIFFE trust domain; agents are `spiffe://<trust_domain>/agent/<name>`.
    trust_domain: String { default: "`mandate.local`", }
    /// Access-token lifetime.
    access_token_ttl_secs: i64 { default: "300", values: "30..=3600", }
    /// Signature algorithm of access tokens.
    access_token_alg: String { default: "`EdDSA`", values: "`EdDSA`, `ES256`", }
    /// Refresh-token lifetime of the authorization code flow; each rotation starts a new one
    /// ([authorization-code.md](authorization-code.md)).
    refresh_token_ttl_secs: i64 { default: "1209600 (14 days)", values: "60..=31536000", }
    /// How long a rotated-in key is published before it signs.
    key_publish_lead_secs: i64 { default: "120", values: "≥ 0", }
    /// Sign an audit checkpoint after this many events…
    audit_checkpoint_events: u64 { default: "1000", values: "≥ 1 (0 counts as 1)", }
    /// …or after this long (milliseconds) with unsigned events.
    audit_checkpoint_ms: u64 { default: "10000", values: "≥ 100 (less counts as 100)", }
    /// Log filter (`tracing` EnvFilter syntax), e.g. `info` or `mandate=debug`.
    log: String { default: "`info`", }
    /// One JSON object per line with the request id of the request a line belongs to, or
    /// human-readable text ([operations.md](operations.md#logs)).
    log_format: LogFormat { default: "`text`", values: "`text`, `json`", }
    /// Tests only: federation rules may use `http://` on loopback and fetch JWKS from internal
    /// addresses ([federation.md](federation.md#fetching-keys)); likewise Client ID Metadata
    /// Documents ([clients.md](clients.md#security-notes)).
    allow_insecure_federation: bool { default: "`false`", }
    /// Serve `POST /oauth2/register` (RFC 7591); when `false` it answers 404 and metadata has no
    /// `registration_endpoint` ([clients.md](clients.md#dynamic-client-registration-rfc-7591)).
    dynamic_registration: bool { default: "`true`", }
    /// Accept `https://` client ids as Client ID Metadata Documents
    /// ([clients.md](clients.md#client-id-metadata-documents)).
    client_id_metadata_documents: bool { default: "`true`", }
    /// DPoP proofs at the token endpoint must carry a server nonce (RFC 9449 §8); refusals are
    /// `use_dpop_nonce` with a `DPoP-Nonce` header
    /// ([delegation.md](delegation.md#dpop-at-the-token-endpoint)).
    dpop_nonce_required: bool { default: "`false`", }
    /// Unix socket of the SPIFFE Workload API
    /// ([workload-identity.md](workload-identity.md#workload-api-and-attestation)).
    workload_socket: PathBuf { default: "unset (not served)", flag: "serve --workload-socket", }
    /// X.509-SVID lifetime; Workload API streams renew at half of it.
    x509_svid_ttl_secs: i64 { default: "3600", values: "2..=3600", }
    /// JWT-SVID lifetime.
    jwt_svid_ttl_secs: i64 { default: "300", values: "2..=3600", }
    /// Txn-Token lifetime, never beyond the subject token's `exp` ([txn-tokens.md](txn-tokens.md)).
    txn_token_ttl_secs: i64 { default: "60", values: "1..=300", }
    /// PEM file with an operator root CA; Mandate's SPIFFE CA becomes an intermediate it signs and
    /// the bundle holds this root ([workload-identity.md](workload-identity.md#an-upstream-root));
    /// CLI commands that issue SVIDs need the same setting.
    spiffe_upstream_ca_cert: PathBuf { default: "unset (self-signed CA)", }
    /// PEM private key (PKCS#8, SEC1 or PKCS#1; EC or RSA) of `spiffe_upstream_ca_cert`; both or
    /// neither.
    spiffe_upstream_ca_key: PathBuf { default: "unset", }
    /// A Cedar policy file (or directory of `*.cedar` files) activated when `mandate serve` starts;
    /// the server refuses to start if it does not validate
    /// ([policy.md](policy.md#managing-the-active-set)).
    policy_file: PathBuf { default: "unset (the stored set, if any, stays active)", }
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
            if OTHER_ENV.iter().any(|other| other.name == name) {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let kind = REFERENCE.iter().find(|setting| setting.key == key).map(|setting| setting.kind);
            let typed = match kind {
                Some(ValueKind::Integer) => {
                    toml::Value::Integer(value.trim().parse().with_context(|| format!("{name} must be an integer"))?)
                }
                Some(ValueKind::Boolean) => {
                    toml::Value::Boolean(value.trim().parse().with_context(|| format!("{name} must be true or false"))?)
                }
                // Unknown keys go in as text so the struct's `deny_unknown_fields` names them.
                Some(ValueKind::Text) | None => toml::Value::String(value),
            };
            table.insert(key, typed);
        }
        table.try_into().context("unknown or invalid MANDATE_* environment variable")
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

    /// Sign a checkpoint after this many events (0 counts as 1).
    pub fn audit_checkpoint_events(&self) -> u64 {
        self.audit_checkpoint_events.unwrap_or(1000).max(1)
    }

    /// …or after this long with unsigned events (at least 100 ms).
    pub fn audit_checkpoint_ms(&self) -> u64 {
        self.audit_checkpoint_ms.unwrap_or(10_000).max(100)
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

    /// A numeric setting's effective value, through the accessor the server uses.
    fn resolved(settings: &Settings, key: &str) -> anyhow::Result<i64> {
        Ok(match key {
            "access_token_ttl_secs" => settings.access_token_ttl_secs()?,
            "refresh_token_ttl_secs" => settings.refresh_token_ttl_secs()?,
            "txn_token_ttl_secs" => settings.txn_token_ttl_secs()?,
            "key_publish_lead_secs" => settings.key_publish_lead_secs()?,
            "x509_svid_ttl_secs" => settings.spiffe_config()?.x509_svid_ttl_secs,
            "jwt_svid_ttl_secs" => settings.spiffe_config()?.jwt_svid_ttl_secs,
            "audit_checkpoint_events" => i64::try_from(settings.audit_checkpoint_events())?,
            "audit_checkpoint_ms" => i64::try_from(settings.audit_checkpoint_ms())?,
            other => panic!("add {other} to this test's accessor list"),
        })
    }

    fn with(key: &str, value: i64) -> anyhow::Result<i64> {
        resolved(&Settings::from_toml(&format!("{key} = {value}"))?, key)
    }

    fn leading_integer(text: &str) -> i64 {
        let digits: String =
            text.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    }

    /// The reference's defaults and ranges are text; this holds them to the code.
    #[test]
    fn documented_numeric_defaults_and_ranges_match_the_code() {
        let numeric: Vec<_> = REFERENCE.iter().filter(|setting| setting.kind == ValueKind::Integer).collect();
        assert_eq!(numeric.len(), 8);
        for setting in numeric {
            let key = setting.key;
            assert_eq!(resolved(&Settings::default(), key).unwrap(), leading_integer(setting.default), "{key} default");
            let values = setting.values.unwrap_or_else(|| panic!("{key} documents its values"));
            if let Some((low, high)) = values.split_once("..=") {
                let (low, high) = (low.parse::<i64>().unwrap(), high.parse::<i64>().unwrap());
                assert_eq!(with(key, low).unwrap(), low, "{key} accepts {low}");
                assert_eq!(with(key, high).unwrap(), high, "{key} accepts {high}");
                assert!(with(key, low - 1).is_err(), "{key} refuses {}", low - 1);
                assert!(with(key, high + 1).is_err(), "{key} refuses {}", high + 1);
            } else {
                let low = leading_integer(values);
                assert!(values.starts_with('≥'), "{key}: {values}");
                assert_eq!(with(key, low).unwrap(), low, "{key} accepts {low}");
                if values.contains("counts as") {
                    assert_eq!(with(key, low - 1).unwrap(), low, "{key} raises {} to {low}", low - 1);
                } else {
                    assert!(with(key, low - 1).is_err(), "{key} refuses {}", low - 1);
                }
            }
        }
    }

    #[test]
    fn documented_text_defaults_match_the_code() {
        let default = |key: &str| REFERENCE.iter().find(|setting| setting.key == key).unwrap().default;
        let settings = Settings::default();
        assert_eq!(default("data_dir"), format!("`{}`", settings.data_dir().display()));
        assert_eq!(default("listen"), format!("`{}`", settings.listen()));
        assert_eq!(default("trust_domain"), format!("`{}`", settings.trust_domain()));
    }

    /// Every key of the reference is a key of the file and of the environment, and nothing else is.
    #[test]
    fn every_documented_key_parses_from_file_and_environment() {
        for setting in REFERENCE {
            let (toml_value, env_value) = match setting.kind {
                ValueKind::Integer => ("60".to_owned(), "60"),
                ValueKind::Boolean => ("true".to_owned(), "true"),
                ValueKind::Text if setting.key == "listen" => ("\"127.0.0.1:1\"".to_owned(), "127.0.0.1:1"),
                ValueKind::Text if setting.key == "log_format" => ("\"json\"".to_owned(), "json"),
                ValueKind::Text => ("\"x\"".to_owned(), "x"),
            };
            let file = Settings::from_toml(&format!("{} = {toml_value}", setting.key)).unwrap();
            let from_env = Settings::from_env(env(&[(&setting.env_var(), env_value)])).unwrap();
            assert_ne!(file, Settings::default(), "{} sets a field", setting.key);
            assert_eq!(file, from_env, "{} reads the same from the file and the environment", setting.key);
        }
        assert!(REFERENCE.iter().all(|setting| !OTHER_ENV.iter().any(|other| other.name == setting.env_var())));
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
