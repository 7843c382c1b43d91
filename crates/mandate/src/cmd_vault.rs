//! `mandate broker vault …`: add, list, remove and rotate upstream credentials in the broker's
//! encrypted vault. Secrets are read from stdin, never from argv, and never printed.

use clap::Subcommand;

use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum VaultCmd {
    /// List the vault's connections (never their secrets).
    List,
}

pub async fn vault(_settings: &Settings, command: VaultCmd) -> anyhow::Result<()> {
    match command {
        VaultCmd::List => anyhow::bail!("the vault is not implemented yet"),
    }
}
