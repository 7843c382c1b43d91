//! The `mandate` binary: `serve` runs the authorization server; every other command is an
//! operator action on the same data directory (it may run while the server runs).

mod cmd_audit;
mod cmd_broker;
mod cmd_ciba;
mod cmd_config;
mod cmd_gateway;
mod cmd_idp;
mod cmd_policy;
mod cmd_trust;
mod cmd_vault;
mod cmd_workload;
mod commands;
mod config;
mod demo;
mod serve;
mod setup;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(name = "mandate", version, about = "Identity, delegated authority and an audit trail for AI agents")]
struct Cli {
    /// Data directory (SQLite database, key-encryption key, admin credential).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Database URL: postgres://… for PostgreSQL; SQLite in the data directory by default.
    #[arg(long, global = true)]
    database: Option<String>,
    /// TOML config file (also MANDATE_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the authorization server.
    Serve(ServeArgs),
    /// Run the Txn-Token gateway: a reverse proxy that verifies access tokens and forwards
    /// Transaction Tokens instead (co-located with the server's data directory, or remote
    /// with --tts-url).
    Gateway(cmd_gateway::GatewayArgs),
    /// Manage owners (responsible humans or organisations).
    #[command(subcommand)]
    Owner(commands::OwnerCmd),
    /// Manage agents, their SVIDs, join tokens and attestation selectors.
    #[command(subcommand)]
    Agent(cmd_workload::AgentCommand),
    /// Manage OAuth clients.
    #[command(subcommand)]
    Client(commands::ClientCmd),
    /// Manage protected resources.
    #[command(subcommand)]
    Resource(commands::ResourceCmd),
    /// Kill switch: invalidate everything issued to an agent, owner or client until now.
    Revoke(commands::RevokeArgs),
    /// Signing keys.
    #[command(subcommand)]
    Keys(commands::KeysCmd),
    /// Audit log export and offline verification.
    #[command(subcommand)]
    Audit(cmd_audit::AuditCmd),
    /// Workload identity federation: external issuers whose JWTs agents may trade for tokens.
    #[command(subcommand)]
    Trust(cmd_trust::TrustCmd),
    /// Identity providers whose ID-JAGs and ID tokens Mandate accepts.
    #[command(subcommand)]
    Idp(cmd_idp::IdpCmd),
    /// CIBA step-up approvals waiting for their owners.
    #[command(subcommand)]
    Ciba(cmd_ciba::CibaCmd),
    /// Cedar policy: validate, activate, show; the schema.
    #[command(subcommand)]
    Policy(cmd_policy::PolicyCmd),
    /// The agent-side credential broker: vault, local CA and credential-injecting proxy.
    #[command(subcommand)]
    Broker(cmd_broker::BrokerCmd),
    /// The configuration reference, generated from the settings the binary parses.
    #[command(subcommand)]
    Config(cmd_config::ConfigCmd),
    /// Play the whole story on loopback: workload identity, delegation, policy, approval,
    /// call chain, kill switch and the audit log, each step checked (a temporary data dir).
    Demo(demo::DemoArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Public issuer URL (default http://<listen address>).
    #[arg(long)]
    issuer: Option<String>,
    /// Serve the SPIFFE Workload API on this unix socket (config key `workload_socket`).
    #[arg(long)]
    workload_socket: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let mut settings = settings(&cli)?;
    if matches!(cli.command, Command::Demo(_)) && settings.log.is_none() {
        // The demo tells its own story on stdout; only warnings go to stderr unless asked.
        settings.log = Some("warn".into());
    }
    init_logging(&settings);
    match cli.command {
        Command::Serve(args) => {
            let flags = Settings {
                listen: args.listen,
                issuer: args.issuer,
                workload_socket: args.workload_socket,
                ..Settings::default()
            };
            let settings = settings.overlay(flags);
            serve::serve(settings).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Gateway(args) => {
            cmd_gateway::gateway(&settings, args).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Broker(c) => {
            cmd_broker::broker(&settings, c, &commands::Output { json: cli.json }).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Config(c) => {
            cmd_config::config(c)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::demo(&settings, args).await,
        Command::Policy(c) if c.is_offline() => {
            cmd_policy::offline(&c, &commands::Output { json: cli.json })?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Audit(c) if c.is_offline() => cmd_audit::offline(&c, cli.json),
        command => {
            let out = commands::Output { json: cli.json };
            let authz = setup::open(&settings, settings_issuer(&settings)).await?;
            let result = match command {
                Command::Owner(c) => commands::owner(&authz, c, &out).await,
                Command::Agent(c) => cmd_workload::agent(&authz, &settings, c, &out).await,
                Command::Client(c) => commands::client(&authz, c, &out).await,
                Command::Resource(c) => commands::resource(&authz, c, &out).await,
                Command::Revoke(a) => commands::revoke(&authz, a, &out).await,
                Command::Keys(c) => commands::keys(&authz, c, &out).await,
                Command::Audit(c) => cmd_audit::audit(&authz, c, &out).await,
                Command::Trust(c) => cmd_trust::trust(&authz, c, &out).await,
                Command::Idp(c) => cmd_idp::idp(&authz, c, &out).await,
                Command::Ciba(c) => cmd_ciba::ciba(&authz, c, &out).await,
                Command::Policy(c) => cmd_policy::policy(&authz, c, &out).await,
                Command::Serve(_)
                | Command::Gateway(_)
                | Command::Broker(_)
                | Command::Config(_)
                | Command::Demo(_) => {
                    unreachable!("handled above")
                }
            };
            result.map(|()| std::process::ExitCode::SUCCESS)
        }
    }
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let config_path = cli.config.clone().or_else(|| std::env::var_os("MANDATE_CONFIG").map(PathBuf::from));
    let file = match config_path {
        Some(path) => Settings::from_file(&path)?,
        None => Settings::default(),
    };
    let env = Settings::from_env(std::env::vars()).context("environment")?;
    let flags = Settings { data_dir: cli.data_dir.clone(), database: cli.database.clone(), ..Settings::default() };
    Ok(Settings::default().overlay(file).overlay(env).overlay(flags))
}

fn settings_issuer(settings: &Settings) -> String {
    settings.issuer.clone().unwrap_or_else(|| format!("http://{}", settings.listen()))
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(settings.log.as_deref().unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.log_format.unwrap_or_default() {
        config::LogFormat::Text => logs.try_init(),
        // The request span's fields (`request_id`, `method`) go on every line logged inside it.
        config::LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).try_init(),
    };
}
