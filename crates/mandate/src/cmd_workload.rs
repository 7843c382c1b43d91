//! `mandate agent svid | join-token | selectors`: SPIFFE operations on an agent, beside the
//! registry commands (`create`, `list`, `delete`). Issuance goes through the same audited
//! functions as the Workload API and the HTTP endpoints.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mandate_authz::Authz;
use mandate_workload::bundle::pem_encode;
use mandate_workload::ca::{SETTING_JWT_ISSUER, SpiffeCa, UpstreamCa};
use mandate_workload::svid::{self, join};
use serde_json::json;

use crate::commands::{self, AgentCmd, Output, correlation};
use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    #[command(flatten)]
    Registry(AgentCmd),
    #[command(flatten)]
    Delegation(crate::cmd_idp::DelegationCmd),
    /// Print an X.509-SVID (PEM chain and key) or, with --jwt, a JWT-SVID for AGENT (for testing).
    Svid(SvidArgs),
    /// Create a single-use join token that bootstraps AGENT elsewhere (POST /spiffe/v1/join).
    JoinToken(JoinTokenArgs),
    /// Replace AGENT's workload attestation selectors (none given: clear them).
    Selectors(SelectorsArgs),
}

#[derive(Debug, Args)]
pub struct SvidArgs {
    agent: String,
    /// A JWT-SVID instead of an X.509-SVID.
    #[arg(long)]
    jwt: bool,
    /// JWT-SVID audience (repeatable; at least one with --jwt).
    #[arg(long = "audience", requires = "jwt")]
    audience: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    agent: String,
    /// How long the token may be redeemed, in seconds (at most 7 days).
    #[arg(long, default_value_t = join::DEFAULT_JOIN_TOKEN_TTL_SECS)]
    ttl_secs: i64,
}

#[derive(Debug, Args)]
pub struct SelectorsArgs {
    agent: String,
    /// A selector (repeatable), e.g. unix:uid:1000 or unix:path:/usr/bin/agent.
    #[arg(long = "selector")]
    selectors: Vec<String>,
}

/// The trust domain's CA with the configured SVID lifetimes and, if set, the upstream root.
pub fn spiffe_ca(settings: &Settings, authz: &Authz) -> anyhow::Result<Arc<SpiffeCa>> {
    Ok(Arc::new(SpiffeCa::new(authz.clone(), settings.spiffe_config()?, upstream(settings)?)))
}

fn upstream(settings: &Settings) -> anyhow::Result<Option<UpstreamCa>> {
    match (&settings.spiffe_upstream_ca_cert, &settings.spiffe_upstream_ca_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(UpstreamCa::load(cert, key).context("spiffe_upstream_ca_cert/_key")?)),
        _ => bail!("spiffe_upstream_ca_cert and spiffe_upstream_ca_key must be set together"),
    }
}

/// [`spiffe_ca`] for a command beside a server: unless `issuer` is configured, JWT-SVIDs carry
/// the issuer the server announced, so they match its OIDC discovery document.
async fn cli_spiffe_ca(settings: &Settings, authz: &Authz) -> anyhow::Result<Arc<SpiffeCa>> {
    let mut config = settings.spiffe_config()?;
    if settings.issuer.is_none() {
        config.jwt_issuer = authz.store.setting(SETTING_JWT_ISSUER).await?;
    }
    Ok(Arc::new(SpiffeCa::new(authz.clone(), config, upstream(settings)?)))
}

pub async fn agent(authz: &Authz, settings: &Settings, cmd: AgentCommand, out: &Output) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Registry(c) => commands::agent(authz, c, out).await,
        AgentCommand::Delegation(c) => crate::cmd_idp::delegation(authz, c, out).await,
        AgentCommand::Svid(args) => print_svid(&*cli_spiffe_ca(settings, authz).await?, args, out).await,
        AgentCommand::JoinToken(args) => {
            let created = join::create_join_token(authz, &args.agent, args.ttl_secs, &correlation()).await?;
            let spiffe_id = authz.config.trust_domain.agent_id_str(&args.agent);
            let expires_at = created.record.expires_at_ms.div_euclid(1000);
            let value = json!({
                "token": created.token,
                "agent": args.agent,
                "spiffe_id": spiffe_id,
                "expires_at": expires_at,
            });
            out.show(&value, || {
                format!(
                    "join token for {spiffe_id} (single use, expires at {expires_at}):\n{}\n(shown only now; \
                     redeem with POST {}/spiffe/v1/join)",
                    created.token, authz.config.issuer
                )
            })
        }
        AgentCommand::Selectors(args) => {
            let set = join::set_selectors(authz, &args.agent, &args.selectors, &correlation()).await?;
            out.show(&json!({"agent": args.agent, "selectors": set}), || {
                if set.is_empty() {
                    format!("agent {} has no selectors now", args.agent)
                } else {
                    format!("agent {} selectors: {}", args.agent, set.join(" "))
                }
            })
        }
    }
}

async fn print_svid(ca: &SpiffeCa, args: SvidArgs, out: &Output) -> anyhow::Result<()> {
    let authz = ca.authz();
    let Some(agent) = authz.store.agent(&args.agent).await? else {
        bail!("agent {} does not exist", args.agent);
    };
    if args.jwt {
        let svid = svid::issue_jwt(ca, &agent, &args.audience, &correlation()).await?;
        let value = json!({
            "spiffe_id": svid.spiffe_id,
            "token": svid.token,
            "audience": svid.audience,
            "expires_at": svid.expires_at,
        });
        return out.show(&value, || svid.token.clone());
    }
    let svid = svid::issue_x509(ca, &agent, &correlation()).await?;
    let chain: String = svid.cert_chain_der.iter().map(|der| pem_encode("CERTIFICATE", der)).collect();
    let key = zeroize::Zeroizing::new(pem_encode("PRIVATE KEY", &svid.private_key_pkcs8_der));
    let bundle: String = ca.x509_authorities().await?.iter().map(|der| pem_encode("CERTIFICATE", der)).collect();
    let value = json!({
        "spiffe_id": svid.spiffe_id,
        "svid": chain,
        "key": key.as_str(),
        "bundle": bundle,
        "expires_at": svid.expires_at_ms.div_euclid(1000),
    });
    out.show(&value, || format!("{chain}{}", key.as_str()))
}
