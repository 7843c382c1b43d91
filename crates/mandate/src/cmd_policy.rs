//! `mandate policy …`: validate a Cedar policy set offline, make it the active set (stored in the
//! data directory's database; running servers and co-located gateways reload it within a second),
//! show it, print the published schema.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use mandate_authz::Authz;
use serde_json::json;

use crate::commands::{Output, correlation};

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Check a policy file (or a directory of *.cedar files) against the schema; changes nothing.
    Validate { path: PathBuf },
    /// Validate and activate a policy file or directory (replaces the whole set).
    Set { path: PathBuf },
    /// Print the active set.
    Show,
    /// Print the Cedar schema policies are validated against.
    Schema,
}

impl PolicyCmd {
    /// Whether the command works without opening the data directory.
    pub fn is_offline(&self) -> bool {
        matches!(self, Self::Validate { .. } | Self::Schema)
    }
}

/// The commands that need no data directory.
pub fn offline(command: &PolicyCmd, out: &Output) -> anyhow::Result<()> {
    match command {
        PolicyCmd::Validate { path } => {
            let summary = mandate_policy::validate(&mandate_policy::read_policy_text(path)?)
                .map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", path.display()))?;
            out.show(&json!({"valid": true, "policies": summary.policies, "ids": summary.ids}), || {
                format!("valid: {} policies ({})", summary.policies, summary.ids.join(", "))
            })
        }
        PolicyCmd::Schema => {
            print!("{}", mandate_policy::SCHEMA);
            Ok(())
        }
        PolicyCmd::Set { .. } | PolicyCmd::Show => anyhow::bail!("this policy command needs a data directory"),
    }
}

pub async fn policy(authz: &Authz, command: PolicyCmd, out: &Output) -> anyhow::Result<()> {
    match command {
        PolicyCmd::Set { path } => {
            let source = mandate_policy::read_policy_text(&path)?;
            let summary = mandate_authz::policy::replace(authz, &source, &correlation())
                .await
                .with_context(|| format!("{} was not activated", path.display()))?;
            out.show(&json!({"policies": summary.policies, "ids": summary.ids}), || {
                format!("active: {} policies ({})", summary.policies, summary.ids.join(", "))
            })
        }
        PolicyCmd::Show => match mandate_authz::policy::stored(authz).await? {
            Some(stored) => out.show(&stored, || stored.source.clone()),
            None => {
                out.show(&json!(null), || "no policy set is active (every request is decided without policy)".into())
            }
        },
        other => offline(&other, out),
    }
}
