//! `mandate ciba pending OWNER`: the CIBA requests waiting for an owner's decision, with the
//! approval page of each, so an owner or operator can find them (agents never decide).

use clap::Subcommand;
use mandate_authz::Authz;
use serde_json::json;

use crate::commands::Output;

#[derive(Debug, Subcommand)]
pub enum CibaCmd {
    /// List an owner's pending requests and their approval URLs (under the configured issuer).
    Pending { owner: String },
}

pub async fn ciba(authz: &Authz, command: CibaCmd, out: &Output) -> anyhow::Result<()> {
    let CibaCmd::Pending { owner } = command;
    let pending = mandate_authz::ciba::pending(authz, &owner).await?;
    let rows: Vec<_> = pending
        .iter()
        .map(|(r, url)| {
            json!({
                "approval_id": r.approval_id,
                "approval_url": url,
                "client_id": r.client_id,
                "resource": r.resource,
                "scope": r.scope,
                "binding_message": r.binding_message,
                "authorization_details": r.authorization_details,
                "expires_at_ms": r.expires_at_ms,
            })
        })
        .collect();
    out.show(&rows, || {
        let lines: Vec<String> =
            pending.iter().map(|(r, url)| format!("{}  {}  {url}", r.client_id, r.binding_message)).collect();
        if lines.is_empty() { format!("no pending requests for {owner}") } else { lines.join("\n") }
    })
}
