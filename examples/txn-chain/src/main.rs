//! `txn-chain --role order|risk|payment`: one service of the example chain, trusting Txn-Tokens
//! of the given issuer (keys discovered from its RFC 8414 metadata) for the given trust domain.
//! Prints `listening on http://ADDR` once ready.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mandate_core::SystemClock;
use mandate_example_txn_chain::{Role, router};
use mandate_guard::{RemoteKeys, TxnTokenVerifier};

#[derive(Debug, Parser)]
#[command(name = "txn-chain", about = "Example internal service chain verifying Txn-Tokens")]
struct Args {
    #[arg(long, value_enum)]
    role: Role,
    /// Address to listen on, e.g. 127.0.0.1:9001.
    #[arg(long)]
    listen: SocketAddr,
    /// The Transaction Token Service's issuer URL (the Mandate server).
    #[arg(long)]
    issuer: String,
    /// The trust domain Txn-Tokens must be addressed to (`aud`).
    #[arg(long, default_value = "mandate.local")]
    trust_domain: String,
    /// URL of the next service (order and risk only).
    #[arg(long)]
    next: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    mandate_crypto::init().context("crypto self-test failed")?;
    if (args.role == Role::Payment) != args.next.is_none() {
        anyhow::bail!("--next is required for order and risk, and not accepted for payment");
    }
    let keys = RemoteKeys::new(Arc::new(SystemClock))?;
    let verifier = TxnTokenVerifier::new(args.issuer, args.trust_domain, Arc::new(keys), Arc::new(SystemClock));
    let app = router(args.role, Arc::new(verifier), args.next);
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{}", listener.local_addr()?)?;
    stdout.flush()?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // Without a signal handler the server simply runs until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await?;
    Ok(())
}
