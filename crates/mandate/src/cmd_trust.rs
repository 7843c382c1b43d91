//! `mandate trust`: workload identity federation rules — which external JWTs (Kubernetes,
//! GitHub Actions, SPIFFE JWT-SVIDs) an agent may trade for a Mandate access token.
//! Changes go through the same validated, audited registry functions as the admin API.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use mandate_authz::Authz;
use mandate_authz::federation::NewFederationRule;
use mandate_authz::registry;
use mandate_core::FederationRule;
use serde_json::json;

use crate::commands::{Output, correlation};

#[derive(Debug, Subcommand)]
pub enum TrustCmd {
    /// Trust an external issuer's JWTs for an agent (RFC 7523 jwt-bearer grant).
    AddFederation(Box<AddFederation>),
    /// List federation rules.
    List,
    /// Remove a federation rule (tokens already issued stay valid until they expire).
    Remove { name: String },
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("keys").required(false).multiple(false).args(["jwks_url", "jwks_file"]))]
#[command(group = clap::ArgGroup::new("subjects").required(true).multiple(false).args(["subject", "subject_prefix"]))]
pub struct AddFederation {
    name: String,
    /// The issuer (`iss`), compared exactly.
    #[arg(long)]
    issuer: String,
    /// Where the issuer publishes its JWK Set (https; fetched and cached).
    #[arg(long)]
    jwks_url: Option<String>,
    /// A file holding the issuer's JWK Set (inline keys, no fetching).
    #[arg(long)]
    jwks_file: Option<PathBuf>,
    /// The audience the external token must carry in `aud`.
    #[arg(long)]
    audience: String,
    /// The exact `sub` the external token must have.
    #[arg(long)]
    subject: Option<String>,
    /// A prefix the external token's `sub` must start with.
    #[arg(long)]
    subject_prefix: Option<String>,
    /// A further required string claim, NAME=VALUE (repeatable); NAME is a top-level claim or a
    /// JSON pointer to a nested one, e.g. /kubernetes.io/namespace=prod.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
    /// The agent the external workload becomes.
    #[arg(long)]
    agent: String,
    /// Longest lifetime of tokens issued under this rule (30..=3600; default 3600, and never
    /// beyond access_token_ttl_secs).
    #[arg(long)]
    max_ttl_secs: Option<i64>,
}

pub async fn trust(authz: &Authz, cmd: TrustCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        TrustCmd::AddFederation(args) => {
            let new = new_rule(*args)?;
            let rule = registry::create_federation_rule(authz, new, &correlation()).await?;
            out.show(&rule, || format!("federation rule {} created\n{}", rule.name, describe(&rule)))
        }
        TrustCmd::List => {
            let rules = authz.store.federation_rules().await?;
            out.show(&rules, || rules.iter().map(describe).collect::<Vec<_>>().join("\n"))
        }
        TrustCmd::Remove { name } => {
            registry::delete_federation_rule(authz, &name, &correlation()).await?;
            out.show(&json!({"deleted": "federation rule", "name": name}), || format!("federation rule {name} removed"))
        }
    }
}

fn new_rule(args: AddFederation) -> anyhow::Result<NewFederationRule> {
    let jwks = crate::commands::read_optional(args.jwks_file.as_deref())?;
    let (subject, subject_match) = match (args.subject, args.subject_prefix) {
        (Some(exact), None) => (exact, "exact"),
        (None, Some(prefix)) => (prefix, "prefix"),
        _ => bail!("give exactly one of --subject and --subject-prefix"),
    };
    Ok(NewFederationRule {
        name: args.name,
        issuer: args.issuer,
        jwks_url: args.jwks_url,
        jwks,
        audience: args.audience,
        subject,
        subject_match: Some(subject_match.to_owned()),
        claims: parse_claims(&args.claims)?,
        agent: args.agent,
        max_ttl_secs: args.max_ttl_secs,
    })
}

fn parse_claims(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut claims = BTreeMap::new();
    for item in raw {
        let Some((name, value)) = item.split_once('=') else {
            bail!("--claim {item:?}: use NAME=VALUE");
        };
        if claims.insert(name.to_owned(), value.to_owned()).is_some() {
            bail!("--claim {name:?} is given twice");
        }
    }
    Ok(claims)
}

fn describe(rule: &FederationRule) -> String {
    let keys = match (&rule.jwks_url, &rule.jwks) {
        (Some(url), _) => url.clone(),
        (None, Some(_)) => "inline JWKS".into(),
        (None, None) => "Mandate's JWT-SVID keys".into(),
    };
    let claims: Vec<String> = rule.claims.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\tissuer={}\tkeys={keys}\taudience={}\tsubject({})={}\tclaims=[{}]\tagent={}\tmax_ttl_secs={}",
        rule.name,
        rule.issuer,
        rule.audience,
        rule.subject_match.as_str(),
        rule.subject,
        claims.join(", "),
        rule.agent,
        rule.max_ttl_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::parse_claims;

    #[test]
    fn claims_are_name_value_pairs_with_nested_paths() {
        let parsed = parse_claims(&["repository=acme/app".into(), "/kubernetes.io/namespace=prod".into()]);
        let parsed = parsed.unwrap_or_default();
        assert_eq!(parsed.get("repository").map(String::as_str), Some("acme/app"));
        assert_eq!(parsed.get("/kubernetes.io/namespace").map(String::as_str), Some("prod"));
        assert!(parse_claims(&["no-equals".into()]).is_err());
        assert!(parse_claims(&["a=1".into(), "a=2".into()]).is_err());
    }
}
