//! `mandate broker`: the agent-side credential broker — its forward proxy (`run`), its local CA
//! (`ca`) and its vault (`vault …`, in cmd_vault.rs).

use clap::Subcommand;

use crate::cmd_vault::VaultCmd;
use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum BrokerCmd {
    /// Manage the encrypted vault of upstream credentials.
    #[command(subcommand)]
    Vault(VaultCmd),
}

pub async fn broker(settings: &Settings, command: BrokerCmd) -> anyhow::Result<()> {
    match command {
        BrokerCmd::Vault(c) => crate::cmd_vault::vault(settings, c).await,
    }
}
