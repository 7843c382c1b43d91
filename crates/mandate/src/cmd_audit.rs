//! `mandate audit`: export, receipts and queries on a data directory, and the offline checks
//! (`verify`, `verify-receipt`) that need only a file and the log's verifier key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mandate_audit::query::QueryParams;
use mandate_audit_verify::VerifierKey;
use mandate_authz::Authz;
use serde_json::{Value, json};

use crate::commands::Output;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Write the whole log as JSONL, ending with a fresh signed checkpoint.
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify an export offline against the log's verifier key.
    Verify(VerifyArgs),
    /// Print the log's verifier key (C2SP vkey).
    Key,
    /// Print the events matching every given filter, in log order (JSON lines with --json).
    Query(QueryArgs),
    /// Write a self-contained receipt for one event: the event, its inclusion proof and the
    /// signed checkpoint it leads to.
    Receipt(ReceiptArgs),
    /// Verify a receipt offline against the log's verifier key.
    VerifyReceipt(VerifyReceiptArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("filter").required(true).multiple(true)
    .args(["txn", "agent", "owner", "jti", "client", "action", "since", "until"])))]
pub struct QueryArgs {
    /// A transaction id (a Txn-Token's `txn`): every hop of one call chain.
    #[arg(long)]
    txn: Option<String>,
    /// What an agent did, by name or SPIFFE ID.
    #[arg(long)]
    agent: Option<String>,
    /// What was done on behalf of an owner (events naming it as owner or as the principal acted for).
    #[arg(long)]
    owner: Option<String>,
    /// Every event of one token id; its `token.issue` event names the agent, owner and client responsible.
    #[arg(long)]
    jti: Option<String>,
    /// An OAuth client_id.
    #[arg(long)]
    client: Option<String>,
    /// An action prefix, e.g. `token.` or `revoke.`.
    #[arg(long)]
    action: Option<String>,
    /// Events at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Events before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Print at most this many events.
    #[arg(long)]
    limit: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    file: PathBuf,
    /// The verifier key string, or a file containing it.
    #[arg(long)]
    key: String,
    /// A checkpoint saved earlier (signed note text): the export must extend it, so a history
    /// rewritten after it was published is detected.
    #[arg(long)]
    trusted_checkpoint: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReceiptArgs {
    /// The event's `seq`.
    seq: u64,
    /// Write the receipt here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyReceiptArgs {
    file: PathBuf,
    /// The verifier key string, or a file containing it.
    #[arg(long)]
    key: String,
}

pub async fn audit(authz: &Authz, cmd: AuditCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Export { out: path } => export(authz, path).await,
        AuditCmd::Key => {
            let key = authz.log.signer().verifier_key();
            out.show(&json!({ "verifier_key": key }), || key.clone())
        }
        AuditCmd::Verify(_) | AuditCmd::VerifyReceipt(_) => bail!("offline checks run without a data directory"),
        AuditCmd::Query(args) => query(authz, args, out).await,
        AuditCmd::Receipt(args) => receipt(authz, &args).await,
    }
}

async fn export(authz: &Authz, path: Option<PathBuf>) -> anyhow::Result<()> {
    let mut writer = output_file(path.as_deref())?;
    let entries = mandate_audit::export(&authz.log, writer.as_mut()).await?;
    writer.flush()?;
    if let Some(p) = path {
        eprintln!("exported {entries} entries to {}", p.display());
    }
    Ok(())
}

fn output_file(path: Option<&Path>) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match path {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    })
}

async fn receipt(authz: &Authz, args: &ReceiptArgs) -> anyhow::Result<()> {
    let receipt = mandate_audit::receipt::receipt(&authz.log, args.seq).await?;
    let mut writer = output_file(args.out.as_deref())?;
    writer.write_all(mandate_audit::receipt::receipt_text(&receipt).as_bytes())?;
    writer.flush()?;
    if let Some(p) = &args.out {
        eprintln!("receipt for event {} written to {}", args.seq, p.display());
    }
    Ok(())
}

/// Scans the log with the filter shared with the admin API and prints each match as found.
async fn query(authz: &Authz, args: QueryArgs, out: &Output) -> anyhow::Result<()> {
    let params = QueryParams {
        agent: args.agent,
        owner: args.owner,
        jti: args.jti,
        client: args.client,
        txn: args.txn,
        action: args.action,
        since: args.since,
        until: args.until,
        limit: args.limit,
        from: None,
    };
    let filter = params.into_filter(&authz.config.trust_domain)?;
    let print = |event: Value| println!("{}", if out.json { event.to_string() } else { describe_event(&event) });
    filter.scan(authz.store.as_ref(), print).await?;
    Ok(())
}

/// One event on one line for people: when, what, the outcome, who, and why.
fn describe_event(event: &Value) -> String {
    let text = |name: &str| event[name].as_str().unwrap_or("-").to_owned();
    format!(
        "{} {} {} {} agent={} owner={} subject={} client={} jti={} txn={} {}",
        event["seq"],
        text("ts"),
        text("action"),
        text("decision"),
        text("agent"),
        text("owner"),
        text("subject"),
        text("client"),
        text("jti"),
        text("txn"),
        event["detail"].as_str().unwrap_or_default()
    )
}

impl AuditCmd {
    /// Whether the command needs only a file and the verifier key, no data directory.
    pub fn is_offline(&self) -> bool {
        matches!(self, Self::Verify(_) | Self::VerifyReceipt(_))
    }
}

/// Runs an offline command (see [`AuditCmd::is_offline`]).
pub fn offline(cmd: &AuditCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Verify(args) => verify_export(args, json),
        AuditCmd::VerifyReceipt(args) => verify_receipt(args, json),
        _ => bail!("this audit command needs a data directory"),
    }
}

fn read_key(key: &str) -> anyhow::Result<VerifierKey> {
    let text = if Path::new(key).is_file() {
        std::fs::read_to_string(key).with_context(|| format!("reading {key}"))?
    } else {
        key.to_owned()
    };
    VerifierKey::from_str(text.trim()).context("invalid verifier key")
}

fn verify_export(args: &VerifyArgs, json: bool) -> anyhow::Result<ExitCode> {
    let key = read_key(&args.key)?;
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let reader = std::io::BufReader::new(file);
    let result = match &args.trusted_checkpoint {
        Some(path) => {
            let note = crate::commands::read_text(path)?;
            let trusted = mandate_audit_verify::verify_note(&note, &key)
                .with_context(|| format!("the trusted checkpoint {} does not verify", path.display()))?;
            if trusted.origin != key.name() {
                bail!("the trusted checkpoint's origin {:?} is not the key name {:?}", trusted.origin, key.name());
            }
            mandate_audit_verify::verify_export_extending(reader, &key, &trusted)
        }
        None => mandate_audit_verify::verify_export(reader, &key),
    };
    let (message, value) = match &result {
        Ok(report) => (
            format!("OK: {} entries, {} checkpoints verified", report.entries, report.checkpoints),
            json!({"ok": true, "entries": report.entries, "checkpoints": report.checkpoints, "root": hex::encode(report.root)}),
        ),
        Err(e) => (format!("FAIL: {e}"), json!({"ok": false, "error": e.to_string(), "line": e.line, "seq": e.seq})),
    };
    report(json, &message, &value, result.is_ok())
}

fn verify_receipt(args: &VerifyReceiptArgs, json: bool) -> anyhow::Result<ExitCode> {
    let key = read_key(&args.key)?;
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let result = mandate_audit_verify::verify_receipt(&bytes, &key);
    let (message, value) = match &result {
        Ok(r) => (
            format!(
                "OK: event {} is entry {} of the log of {} entries signed by {}",
                describe_short(&r.event),
                r.index,
                r.tree_size,
                key.name()
            ),
            json!({"ok": true, "index": r.index, "tree_size": r.tree_size, "root": hex::encode(r.root), "event": r.event}),
        ),
        Err(e) => (format!("FAIL: {e}"), json!({"ok": false, "error": e.to_string()})),
    };
    report(json, &message, &value, result.is_ok())
}

fn describe_short(event: &Value) -> String {
    format!("{} {}", event["action"].as_str().unwrap_or("-"), event["decision"].as_str().unwrap_or("-"))
}

fn report(json: bool, message: &str, value: &Value, ok: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{message}");
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
