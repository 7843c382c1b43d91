//! `mandate idp …` and `mandate agent delegate | delegations | undelegate`: cross-domain trust.
//! Trusted IdPs are the issuers whose ID-JAGs (and ID tokens) Mandate accepts; delegation targets
//! say for which authorization server, resource and scopes an agent may obtain ID-JAGs here.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use mandate_authz::Authz;
use mandate_authz::trust::{self, NewDelegationTarget, NewTrustedIdp};
use mandate_core::{DelegationTarget, TrustedIdp};
use serde_json::json;

use crate::commands::{Output, correlation};

#[derive(Debug, Subcommand)]
pub enum IdpCmd {
    /// Trust an identity provider's ID-JAGs and ID tokens.
    Add(AddIdp),
    /// List trusted identity providers.
    List,
    /// Stop trusting an identity provider (tokens already issued live until they expire).
    Delete { name: String },
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("keys").required(true).multiple(false).args(["jwks_url", "jwks_file"]))]
pub struct AddIdp {
    name: String,
    /// The IdP's issuer identifier (`iss`), compared exactly.
    #[arg(long)]
    issuer: String,
    /// Where the IdP publishes its JWK Set (https; fetched and cached).
    #[arg(long)]
    jwks_url: Option<String>,
    /// A file holding the IdP's JWK Set (inline keys, no fetching).
    #[arg(long)]
    jwks_file: Option<PathBuf>,
}

/// Delegation targets, as `mandate agent` subcommands.
#[derive(Debug, Subcommand)]
pub enum DelegationCmd {
    /// Let AGENT obtain ID-JAGs for RESOURCE at the authorization server AUDIENCE.
    Delegate(Delegate),
    /// List AGENT's delegation targets.
    Delegations { agent: String },
    /// Remove one of AGENT's delegation targets.
    Undelegate(Undelegate),
}

#[derive(Debug, Args)]
pub struct Delegate {
    agent: String,
    /// The authorization server's issuer identifier (the ID-JAG's `aud`).
    #[arg(long)]
    audience: String,
    /// The protected resource at that server (the ID-JAG's `resource`).
    #[arg(long)]
    resource: String,
    /// A scope the ID-JAG may carry (repeatable; at least one).
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// The agent's client id at that authorization server (the ID-JAG's `client_id`).
    #[arg(long)]
    client_id: String,
}

#[derive(Debug, Args)]
pub struct Undelegate {
    agent: String,
    #[arg(long)]
    audience: String,
    #[arg(long)]
    resource: String,
}

pub async fn idp(authz: &Authz, cmd: IdpCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        IdpCmd::Add(args) => {
            let jwks = crate::commands::read_optional(args.jwks_file.as_deref())?;
            let new = NewTrustedIdp { name: args.name, issuer: args.issuer, jwks_url: args.jwks_url, jwks };
            let idp = trust::create_trusted_idp(authz, new, &correlation()).await?;
            out.show(&idp, || format!("trusted IdP {} added\n{}", idp.name, describe_idp(&idp)))
        }
        IdpCmd::List => {
            let idps = authz.store.trusted_idps().await?;
            out.show(&idps, || idps.iter().map(describe_idp).collect::<Vec<_>>().join("\n"))
        }
        IdpCmd::Delete { name } => {
            trust::delete_trusted_idp(authz, &name, &correlation()).await?;
            out.show(&json!({"deleted": "trusted IdP", "name": name}), || format!("trusted IdP {name} deleted"))
        }
    }
}

pub async fn delegation(authz: &Authz, cmd: DelegationCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        DelegationCmd::Delegate(args) => {
            let new = NewDelegationTarget {
                agent: args.agent,
                audience: args.audience,
                resource: args.resource,
                scopes: args.scopes,
                remote_client_id: args.client_id,
            };
            let target = trust::create_delegation_target(authz, new, &correlation()).await?;
            out.show(&target, || format!("delegation target added\n{}", describe_target(&target)))
        }
        DelegationCmd::Delegations { agent } => {
            if authz.store.agent(&agent).await?.is_none() {
                anyhow::bail!("agent {agent} does not exist");
            }
            let targets = authz.store.delegation_targets(&agent).await?;
            out.show(&targets, || targets.iter().map(describe_target).collect::<Vec<_>>().join("\n"))
        }
        DelegationCmd::Undelegate(args) => {
            trust::delete_delegation_target(authz, &args.agent, &args.audience, &args.resource, &correlation()).await?;
            let value = json!({"deleted": "delegation target", "agent": args.agent, "audience": args.audience,
                "resource": args.resource});
            out.show(&value, || {
                format!("delegation target of {} at {} for {} removed", args.agent, args.audience, args.resource)
            })
        }
    }
}

fn describe_idp(idp: &TrustedIdp) -> String {
    let keys = idp.jwks_url.as_deref().unwrap_or("inline JWKS");
    format!("{}\tissuer={}\tkeys={keys}", idp.name, idp.issuer)
}

fn describe_target(target: &DelegationTarget) -> String {
    format!(
        "{}\taudience={}\tresource={}\tscopes={}\tclient_id={}",
        target.agent,
        target.audience,
        target.resource,
        target.scopes.join(" "),
        target.remote_client_id
    )
}
