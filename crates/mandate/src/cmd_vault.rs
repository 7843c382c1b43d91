//! `mandate broker vault …`: add, list, remove and rotate upstream credentials in the broker's
//! encrypted vault. Secrets are read from stdin, never from argv, and never printed.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use mandate_broker::vault::{
    ClientAuth, EntryInfo, EntryKind, KdfParams, MAX_SECRET_LEN, Secret, SecretString, Vault, VaultKey,
};
use zeroize::Zeroizing;

use crate::commands::Output;
use crate::config::Settings;

/// The vault passphrase when no file is named.
pub const PASSPHRASE_ENV: &str = "MANDATE_VAULT_PASSPHRASE";
/// The new passphrase for `rekey` when no file is named.
pub const NEW_PASSPHRASE_ENV: &str = "MANDATE_VAULT_NEW_PASSPHRASE";
const VAULT_FILE: &str = "vault.json";
/// Longest passphrase file or stdin secret read.
const MAX_INPUT: u64 = 64 * 1024;

#[derive(Debug, Subcommand)]
pub enum VaultCmd {
    /// Create an empty vault (with --key-file: create that key file too, if it does not exist).
    Init(Unlock),
    /// Add a connection; its secret is read from stdin (first line; a refresh-token entry
    /// with --confidential reads the client secret from the second line; an id-jag entry reads
    /// the ID token, the client secret at the resource AS and the one at the IdP).
    Add(AddArgs),
    /// List the vault's connections (never their secrets).
    List(Unlock),
    /// Remove a connection.
    Rm(NameArgs),
    /// Replace a connection's secret with a new one read from stdin.
    Rotate(NameArgs),
    /// Re-encrypt the vault's data keys under a new passphrase (MANDATE_VAULT_NEW_PASSPHRASE or
    /// --new-passphrase-file) or a new key file (--new-key-file, created if missing).
    Rekey(RekeyArgs),
}

/// Where the vault is and what unlocks it.
#[derive(Debug, Args)]
pub struct Unlock {
    /// The broker's directory, holding vault.json; default <data dir>/broker.
    #[arg(long)]
    broker_dir: Option<PathBuf>,
    /// Read the vault passphrase from this file (else MANDATE_VAULT_PASSPHRASE).
    #[arg(long, conflicts_with = "key_file")]
    passphrase_file: Option<PathBuf>,
    /// Unlock with this 32-byte key file instead of a passphrase.
    #[arg(long)]
    key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    #[command(flatten)]
    unlock: Unlock,
    /// The connection, e.g. github:work.
    name: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    ApiKey,
    OauthClient,
    RefreshToken,
    MandateWorkload,
    IdJag,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AuthArg {
    Basic,
    Post,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    unlock: Unlock,
    /// The connection, e.g. github:work ([a-z0-9_.-]+, optionally :[a-z0-9_.-]+).
    name: String,
    #[arg(long, value_enum)]
    kind: KindArg,
    /// oauth-client, refresh-token, mandate-workload: the token endpoint (https://, or http:// to loopback).
    #[arg(long)]
    token_endpoint: Option<String>,
    /// oauth-client, refresh-token: the client id.
    #[arg(long)]
    client_id: Option<String>,
    /// The scope to request (space-separated).
    #[arg(long)]
    scope: Option<String>,
    /// oauth-client (optional), mandate-workload (required): the RFC 8707 resource.
    #[arg(long)]
    resource: Option<String>,
    /// oauth-client, refresh-token: client authentication at the token endpoint.
    #[arg(long, value_enum, default_value = "basic")]
    auth: AuthArg,
    /// refresh-token: the client is confidential; its secret is the second line of stdin.
    #[arg(long)]
    confidential: bool,
    /// mandate-workload: the JWT-SVID audience (default: the token endpoint's issuer);
    /// id-jag: the resource AS's issuer (required).
    #[arg(long)]
    audience: Option<String>,
    /// id-jag: the IdP's token endpoint, where the ID token is exchanged for an ID-JAG.
    #[arg(long)]
    idp_token_endpoint: Option<String>,
    /// id-jag: this client's id at the IdP.
    #[arg(long)]
    idp_client_id: Option<String>,
    /// id-jag: client authentication at the IdP.
    #[arg(long, value_enum, default_value = "basic")]
    idp_auth: AuthArg,
    /// mandate-workload: which SPIFFE ID to ask the Workload API for, if the process has several.
    #[arg(long)]
    spiffe_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RekeyArgs {
    #[command(flatten)]
    unlock: Unlock,
    /// Read the new passphrase from this file (else MANDATE_VAULT_NEW_PASSPHRASE).
    #[arg(long, conflicts_with = "new_key_file")]
    new_passphrase_file: Option<PathBuf>,
    /// Lock the vault with this key file from now on (created if it does not exist).
    #[arg(long)]
    new_key_file: Option<PathBuf>,
}

pub async fn vault(settings: &Settings, command: VaultCmd, out: &Output) -> anyhow::Result<()> {
    match command {
        VaultCmd::Init(unlock) => {
            let path = unlock.vault_path(settings);
            if path.exists() {
                bail!("{} already exists", path.display());
            }
            let key = match &unlock.key_file {
                Some(key_file) if !key_file.exists() => {
                    let key = VaultKey::create_key_file(key_file)?;
                    println!("created key file {} (keep it secret; the vault is lost without it)", key_file.display());
                    key
                }
                _ => unlock.key()?,
            };
            Vault::create(&path, &key)?;
            println!("created vault {}", path.display());
        }
        VaultCmd::Add(args) => {
            let mut vault = args.unlock.open(settings)?;
            let secret = args.secret()?;
            let info = vault.add(&args.name, secret)?;
            println!("added {} ({})", info.name, info.kind.name());
        }
        VaultCmd::List(unlock) => {
            let vault = unlock.open(settings)?;
            let entries = vault.list();
            out.show(&entries, || list_text(&entries))?;
        }
        VaultCmd::Rm(args) => {
            let mut vault = args.unlock.open(settings)?;
            vault.remove(&args.name)?;
            println!("removed {}", args.name);
        }
        VaultCmd::Rotate(args) => {
            let mut vault = args.unlock.open(settings)?;
            // Fail before reading stdin if the entry does not exist or has nothing to rotate.
            let kind = vault.kind(&args.name).with_context(|| format!("no vault entry named {:?}", args.name))?;
            if !kind.has_secret() {
                bail!("{} is a {} entry: it stores no secret", args.name, kind.name());
            }
            let mut lines = read_secret_lines(1)?;
            let value = lines.remove(0);
            let info = vault.rotate(&args.name, value)?;
            println!("rotated {}", info.name);
        }
        VaultCmd::Rekey(args) => {
            let mut vault = args.unlock.open(settings)?;
            let new_key = match (&args.new_key_file, &args.new_passphrase_file) {
                (Some(path), _) if path.exists() => VaultKey::read_key_file(path)?,
                (Some(path), _) => VaultKey::create_key_file(path)?,
                (None, Some(path)) => VaultKey::passphrase(read_bounded(path)?)?,
                (None, None) => match std::env::var(NEW_PASSPHRASE_ENV) {
                    Ok(value) => VaultKey::passphrase(Zeroizing::new(value))?,
                    Err(_) => bail!("set {NEW_PASSPHRASE_ENV}, or pass --new-passphrase-file or --new-key-file"),
                },
            };
            vault.rekey(&new_key, KdfParams::default())?;
            println!("rekeyed {}", vault.path().display());
        }
    }
    Ok(())
}

impl Unlock {
    fn vault_path(&self, settings: &Settings) -> PathBuf {
        self.broker_dir.clone().unwrap_or_else(|| settings.data_dir().join("broker")).join(VAULT_FILE)
    }

    fn key(&self) -> anyhow::Result<VaultKey> {
        vault_key(self.passphrase_file.as_deref(), self.key_file.as_deref())
    }

    fn open(&self, settings: &Settings) -> anyhow::Result<Vault> {
        let key = self.key()?;
        Ok(Vault::open(&self.vault_path(settings), &key)?)
    }
}

impl AddArgs {
    fn required<'a>(&self, value: &'a Option<String>, flag: &str) -> anyhow::Result<&'a String> {
        value.as_ref().with_context(|| format!("--kind {} needs {flag}", self.kind_name()))
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            KindArg::ApiKey => "api-key",
            KindArg::OauthClient => "oauth-client",
            KindArg::RefreshToken => "refresh-token",
            KindArg::MandateWorkload => "mandate-workload",
            KindArg::IdJag => "id-jag",
        }
    }

    /// The entry, with the flags that do not apply to the kind refused rather than ignored.
    fn secret(&self) -> anyhow::Result<Secret> {
        let client_auth = |arg: AuthArg| match arg {
            AuthArg::Basic => ClientAuth::ClientSecretBasic,
            AuthArg::Post => ClientAuth::ClientSecretPost,
        };
        let auth = client_auth(self.auth);
        let unused = |set: bool, flag: &str| -> anyhow::Result<()> {
            if set {
                bail!("{flag} does not apply to --kind {}", self.kind_name());
            }
            Ok(())
        };
        if !matches!(self.kind, KindArg::MandateWorkload | KindArg::IdJag) {
            unused(self.audience.is_some(), "--audience")?;
        }
        if !matches!(self.kind, KindArg::MandateWorkload) {
            unused(self.spiffe_id.is_some(), "--spiffe-id")?;
        }
        if !matches!(self.kind, KindArg::IdJag) {
            unused(self.idp_token_endpoint.is_some(), "--idp-token-endpoint")?;
            unused(self.idp_client_id.is_some(), "--idp-client-id")?;
        }
        if !matches!(self.kind, KindArg::RefreshToken) {
            unused(self.confidential, "--confidential")?;
        }
        let secret = match self.kind {
            KindArg::ApiKey => {
                unused(self.token_endpoint.is_some(), "--token-endpoint")?;
                unused(self.client_id.is_some(), "--client-id")?;
                unused(self.scope.is_some(), "--scope")?;
                unused(self.resource.is_some(), "--resource")?;
                Secret::api_key(read_secret_lines(1)?.remove(0))
            }
            KindArg::OauthClient => {
                let kind = EntryKind::OauthClient {
                    token_endpoint: self.required(&self.token_endpoint, "--token-endpoint")?.clone(),
                    client_id: self.required(&self.client_id, "--client-id")?.clone(),
                    scope: self.scope.clone(),
                    resource: self.resource.clone(),
                    auth,
                };
                Secret::oauth_client(kind, read_secret_lines(1)?.remove(0))
            }
            KindArg::RefreshToken => {
                unused(self.resource.is_some(), "--resource")?;
                let kind = EntryKind::RefreshToken {
                    token_endpoint: self.required(&self.token_endpoint, "--token-endpoint")?.clone(),
                    client_id: self.required(&self.client_id, "--client-id")?.clone(),
                    scope: self.scope.clone(),
                    auth,
                };
                let mut lines = read_secret_lines(if self.confidential { 2 } else { 1 })?.into_iter();
                let refresh_token = lines.next().context("no refresh token on stdin")?;
                Secret::refresh_token(kind, refresh_token, lines.next())
            }
            KindArg::MandateWorkload => {
                unused(self.client_id.is_some(), "--client-id")?;
                let kind = EntryKind::MandateWorkload {
                    token_endpoint: self.required(&self.token_endpoint, "--token-endpoint")?.clone(),
                    resource: self.required(&self.resource, "--resource")?.clone(),
                    scope: self.scope.clone(),
                    audience: self.audience.clone(),
                    spiffe_id: self.spiffe_id.clone(),
                };
                Secret::mandate_workload(kind)
            }
            KindArg::IdJag => {
                let kind = EntryKind::IdJag {
                    idp_token_endpoint: self.required(&self.idp_token_endpoint, "--idp-token-endpoint")?.clone(),
                    idp_client_id: self.required(&self.idp_client_id, "--idp-client-id")?.clone(),
                    idp_auth: client_auth(self.idp_auth),
                    audience: self.required(&self.audience, "--audience")?.clone(),
                    resource: self.resource.clone(),
                    scope: self.scope.clone(),
                    token_endpoint: self.required(&self.token_endpoint, "--token-endpoint")?.clone(),
                    client_id: self.required(&self.client_id, "--client-id")?.clone(),
                    auth,
                };
                let mut lines = read_secret_lines(3)?.into_iter();
                let (Some(id_token), Some(client_secret), Some(idp_client_secret)) =
                    (lines.next(), lines.next(), lines.next())
                else {
                    bail!("expected the ID token, the client secret and the IdP client secret on stdin");
                };
                Secret::id_jag(kind, id_token, client_secret, idp_client_secret)
            }
        };
        Ok(secret)
    }
}

/// Reads exactly `count` non-empty lines of secrets from stdin (bounded, zeroized).
fn read_secret_lines(count: usize) -> anyhow::Result<Vec<SecretString>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("enter the secret{} (one per line), then Ctrl-D:", if count > 1 { "s" } else { "" });
    }
    let mut raw = Zeroizing::new(Vec::new());
    stdin.lock().take(MAX_INPUT + 1).read_to_end(&mut raw).context("reading the secret from stdin")?;
    if raw.len() as u64 > MAX_INPUT || raw.len() > count * (MAX_SECRET_LEN + 2) {
        bail!("the secret on stdin is too long");
    }
    let text = std::str::from_utf8(&raw).context("the secret on stdin is not UTF-8")?;
    let lines: Vec<SecretString> = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty())
        .map(SecretString::new)
        .collect();
    if lines.len() != count {
        bail!("expected {count} non-empty line{} on stdin, got {}", if count > 1 { "s" } else { "" }, lines.len());
    }
    Ok(lines)
}

/// The vault key: a key file, a passphrase file, or MANDATE_VAULT_PASSPHRASE, in that order
/// (shared with `mandate broker run`).
pub fn vault_key(passphrase_file: Option<&Path>, key_file: Option<&Path>) -> anyhow::Result<VaultKey> {
    if let Some(path) = key_file {
        return Ok(VaultKey::read_key_file(path)?);
    }
    let passphrase = match passphrase_file {
        Some(path) => read_bounded(path)?,
        None => match std::env::var(PASSPHRASE_ENV) {
            Ok(value) => Zeroizing::new(value),
            Err(_) => bail!("set {PASSPHRASE_ENV}, or pass --passphrase-file or --key-file"),
        },
    };
    Ok(VaultKey::passphrase(passphrase)?)
}

fn read_bounded(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut raw = Zeroizing::new(Vec::new());
    file.take(MAX_INPUT + 1).read_to_end(&mut raw).with_context(|| format!("reading {}", path.display()))?;
    if raw.len() as u64 > MAX_INPUT {
        bail!("{} is larger than 64 KiB", path.display());
    }
    let text = std::str::from_utf8(&raw).with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// The `list` table (names, kinds, dates, endpoints; never a secret).
fn list_text(entries: &[EntryInfo]) -> String {
    if entries.is_empty() {
        return "(no connections)".to_owned();
    }
    let mut lines = vec![format!("{:<32} {:<17} {:<24} {:<24} ENDPOINT", "NAME", "KIND", "CREATED", "ROTATED")];
    for e in entries {
        lines.push(format!(
            "{:<32} {:<17} {:<24} {:<24} {}",
            e.name,
            e.kind.name(),
            e.created,
            e.rotated.as_deref().unwrap_or("-"),
            e.kind.token_endpoint().unwrap_or("-")
        ));
    }
    lines.join("\n")
}
