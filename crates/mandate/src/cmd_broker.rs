//! `mandate broker`: the agent-side credential broker — its forward proxy (`run`), its local CA
//! (`ca`) and its vault (`vault …`, in cmd_vault.rs).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mandate_broker::credentials::CredentialProvider;
use mandate_broker::lifecycle::{TokenClientOptions, VaultCredentials};
use mandate_broker::proxy::ca::{self, LocalCa};
use mandate_broker::proxy::rules::Rules;
use mandate_broker::proxy::upstream::UpstreamTrust;
use mandate_broker::proxy::{AuditLogSink, Broker, BrokerLimits, BrokerParts};
use mandate_broker::vault::Vault;
use mandate_core::{Clock, SystemClock};
use tokio::net::TcpListener;

use crate::cmd_vault::VaultCmd;
use crate::config::Settings;
use crate::setup;

const RULES_FILE: &str = "rules.toml";
const VAULT_FILE: &str = "vault.json";
const MAX_RULES_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum BrokerCmd {
    /// Run the credential-injecting forward proxy (point the agent's HTTPS_PROXY at it).
    Run(RunArgs),
    /// Create the broker's local CA (once) and print its certificate for the agent's trust store.
    Ca(CaArgs),
    /// Manage the encrypted vault of upstream credentials.
    #[command(subcommand)]
    Vault(VaultCmd),
}

#[derive(Debug, Args)]
pub struct BrokerDirArg {
    /// The broker's directory (vault.json, ca.pem, ca.key, rules.toml); default <data dir>/broker.
    #[arg(long)]
    broker_dir: Option<PathBuf>,
}

impl BrokerDirArg {
    fn resolve(&self, settings: &Settings) -> PathBuf {
        self.broker_dir.clone().unwrap_or_else(|| settings.data_dir().join("broker"))
    }
}

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(flatten)]
    dir: BrokerDirArg,
    /// Also write the CA certificate (PEM) to this file, e.g. for the agent's CA bundle.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to listen on; keep it on loopback (the proxy has no client authentication).
    #[arg(long)]
    listen: SocketAddr,
    #[command(flatten)]
    dir: BrokerDirArg,
    /// The rules file (default <broker dir>/rules.toml).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// The agent's SPIFFE ID (or agent name), recorded in every audit event with its owner.
    #[arg(long)]
    agent: Option<String>,
    /// Extra PEM CA bundle trusted for upstreams (and token endpoints), besides the system roots.
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// Trust only --upstream-ca, not the system's roots.
    #[arg(long, requires = "upstream_ca")]
    no_system_roots: bool,
    /// Read the vault passphrase from this file (else MANDATE_VAULT_PASSPHRASE).
    #[arg(long, conflicts_with = "key_file")]
    passphrase_file: Option<PathBuf>,
    /// Unlock the vault with this 32-byte key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// SPIFFE Workload API socket, for connections that obtain Mandate tokens with the agent's SVID.
    #[arg(long)]
    workload_socket: Option<PathBuf>,
    /// Agent connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

pub async fn broker(settings: &Settings, command: BrokerCmd, out: &crate::commands::Output) -> anyhow::Result<()> {
    match command {
        BrokerCmd::Run(args) => run(settings, args).await,
        BrokerCmd::Ca(args) => ca_command(settings, &args),
        BrokerCmd::Vault(c) => crate::cmd_vault::vault(settings, c, out).await,
    }
}

fn ca_command(settings: &Settings, args: &CaArgs) -> anyhow::Result<()> {
    let dir = args.dir.resolve(settings);
    let files = ca::create_or_load(&dir, SystemClock.now_secs())?;
    let mut stderr = std::io::stderr();
    let verb = if files.created { "created" } else { "exists" };
    writeln!(stderr, "broker CA {verb}: {} (key {}, mode 0600)", files.cert_path.display(), files.key_path.display())?;
    if let Some(out) = &args.out {
        std::fs::write(out, &files.cert_pem).with_context(|| format!("writing {}", out.display()))?;
        writeln!(stderr, "CA certificate written to {}", out.display())?;
    }
    let mut stdout = std::io::stdout();
    stdout.write_all(files.cert_pem.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

async fn run(settings: &Settings, args: RunArgs) -> anyhow::Result<()> {
    let dir = args.dir.resolve(settings);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let local_ca = LocalCa::load(&dir, Arc::clone(&clock)).context("the broker needs its CA")?;
    let rules_path = args.rules.clone().unwrap_or_else(|| dir.join(RULES_FILE));
    let rules = read_rules(&rules_path)?;
    let upstream_ca_pem = match &args.upstream_ca {
        Some(path) => Some(ca::read_bounded(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let extra_roots = match &upstream_ca_pem {
        Some(pem) => ca::pem_certificates(pem).context("--upstream-ca")?,
        None => Vec::new(),
    };
    if upstream_ca_pem.is_some() && extra_roots.is_empty() {
        bail!("--upstream-ca holds no certificate");
    }

    let vault_path = dir.join(VAULT_FILE);
    if !vault_path.exists() {
        bail!("no vault at {}; create one with `mandate broker vault`", vault_path.display());
    }
    let key = crate::cmd_vault::vault_key(args.passphrase_file.as_deref(), args.key_file.as_deref())?;
    let vault = Vault::open(&vault_path, &key).with_context(|| format!("opening {}", vault_path.display()))?;
    drop(key);
    let options = TokenClientOptions {
        extra_roots_pem: upstream_ca_pem.map(String::into_bytes),
        ..TokenClientOptions::default()
    };
    let credentials: Arc<dyn CredentialProvider> =
        Arc::new(VaultCredentials::new(vault, options, Arc::clone(&clock), args.workload_socket.clone())?);

    // The audit log of the Mandate data directory, as the co-located gateway opens it.
    let issuer = settings.issuer.clone().unwrap_or_else(|| format!("http://{}", settings.listen()));
    let authz = setup::open(settings, issuer).await?;
    let (agent, owner) = match &args.agent {
        Some(agent) => {
            let (id, owner) = agent_and_owner(&authz, agent).await?;
            (Some(id), Some(owner))
        }
        None => (None, None),
    };

    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let broker = Broker::new(BrokerParts {
        rules,
        ca: local_ca,
        credentials,
        audit: Arc::new(AuditLogSink(authz.log.clone())),
        clock,
        agent: agent.clone(),
        owner,
        upstream: UpstreamTrust { system_roots: !args.no_system_roots, extra_roots },
        limits: BrokerLimits { max_connections: args.max_connections, ..BrokerLimits::default() },
    })?;

    let address = listener.local_addr()?;
    if !address.ip().is_loopback() {
        // Anyone who can reach the listener can spend the vault's credentials through it.
        tracing::warn!(%address, "the broker listens beyond loopback and does not authenticate its clients");
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "Mandate broker listening on http://{address}")?;
    writeln!(stdout, "  rules:   {}", rules_path.display())?;
    writeln!(stdout, "  CA:      {}", dir.join(ca::CA_CERT_FILE).display())?;
    writeln!(stdout, "  agent:   {}", agent.as_deref().unwrap_or("-"))?;
    writeln!(stdout, "  for the agent: HTTPS_PROXY=http://{address} and trust {}", ca::CA_CERT_FILE)?;
    stdout.flush()?;

    broker.serve(listener, crate::serve::shutdown_signal()).await?;
    authz.log.checkpoint().await.context("final audit checkpoint")?;
    Ok(())
}

fn read_rules(path: &Path) -> anyhow::Result<Rules> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("the broker needs a rules file at {} (docs/broker.md)", path.display()))?
        .len();
    if len > MAX_RULES_FILE_BYTES {
        bail!("{} is larger than {MAX_RULES_FILE_BYTES} bytes", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Rules::parse(&text).with_context(|| format!("in {}", path.display()))
}

/// The agent's SPIFFE ID and its owner, from the store; an unknown agent is an error, so audit
/// events never name an agent that does not exist.
async fn agent_and_owner(authz: &mandate_authz::Authz, agent: &str) -> anyhow::Result<(String, String)> {
    let trust_domain = &authz.config.trust_domain;
    let name = match agent.starts_with("spiffe://") {
        true => trust_domain
            .agent_name(agent)
            .with_context(|| format!("--agent {agent} is not an agent of {trust_domain}"))?,
        false => agent,
    };
    let record = authz.store.agent(name).await?.with_context(|| format!("no agent named {name:?}"))?;
    Ok((record.spiffe_id.to_string(), record.owner.to_string()))
}
