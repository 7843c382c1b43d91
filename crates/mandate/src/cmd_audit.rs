//! `mandate audit`: export, receipts and queries on a data directory, and the offline checks
//! (`verify`, `verify-receipt`) that need only a file and the log's verifier key.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
    /// (A `jti` is base64url and may begin with `-`, so the value is taken as is.)
    #[arg(long, allow_hyphen_values = true)]
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
    // Lines the export will write: header, entries, stored checkpoints, the fresh checkpoint.
    let lines = authz.store.audit_len().await? + authz.store.checkpoints().await?.len() as u64 + 2;
    let progress = Progress::start("audit export", "lines", lines);
    let mut writer = CountingWriter { inner: output_file(path.as_deref())?, progress };
    let entries = mandate_audit::export(&authz.log, &mut writer).await?;
    writer.flush()?;
    writer.progress.finish();
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
    writer.write_all(mandate_audit::receipt::receipt_text(&receipt)?.as_bytes())?;
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
    // A reader that stops early (`| head`) closes the pipe: the rest of the output is unwanted,
    // not an error. Any other write failure is.
    let mut write_error = None;
    let mut pipe_closed = false;
    let print = |event: Value| {
        if pipe_closed || write_error.is_some() {
            return;
        }
        let line = if out.json { event.to_string() } else { describe_event(&event) };
        match writeln!(std::io::stdout(), "{line}") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => pipe_closed = true,
            Err(e) => write_error = Some(e),
        }
    };
    filter.scan(authz.store.as_ref(), print).await?;
    match write_error {
        Some(e) => Err(anyhow::Error::new(e).context("writing the matching events")),
        None => Ok(()),
    }
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
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = Progress::start("audit verify", "bytes", size);
    let reader = std::io::BufReader::new(CountingReader { inner: file, progress: progress.clone() });
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
    progress.finish();
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

/// Without a terminal, a progress line is printed this often (and none for short runs).
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Progress of a long audit command on standard error: a bar when standard error is a
/// terminal; otherwise a plain line every [`PLAIN_PROGRESS_EVERY`], so logs show the command
/// is alive. Standard output (the export itself, `--json` answers) is never touched.
#[derive(Clone)]
struct Progress {
    inner: Arc<Mutex<ProgressState>>,
}

struct ProgressState {
    what: &'static str,
    unit: &'static str,
    total: u64,
    done: u64,
    bar: Option<ProgressBar>,
    /// `None`: no plain lines at all (a bar is shown, or the progress is hidden).
    next_line: Option<Instant>,
}

impl Progress {
    fn start(what: &'static str, unit: &'static str, total: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {prefix} ({eta})") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what);
            bar.set_prefix(unit);
            bar
        });
        let next_line = (!terminal).then(|| Instant::now() + PLAIN_PROGRESS_EVERY);
        Self::with(ProgressState { what, unit, total, done: 0, bar, next_line })
    }

    fn with(state: ProgressState) -> Self {
        Self { inner: Arc::new(Mutex::new(state)) }
    }

    fn advance(&self, amount: u64) {
        let Ok(mut state) = self.inner.lock() else { return };
        state.done = state.done.saturating_add(amount);
        if let Some(bar) = &state.bar {
            bar.set_position(state.done);
        } else if let Some(due) = state.next_line.filter(|due| Instant::now() >= *due) {
            eprintln!("{}: {}/{} {}", state.what, state.done, state.total, state.unit);
            state.next_line = Some(due + PLAIN_PROGRESS_EVERY);
        }
    }

    #[cfg(test)]
    fn done(&self) -> u64 {
        self.inner.lock().map(|s| s.done).unwrap_or(0)
    }

    fn finish(&self) {
        if let Ok(state) = self.inner.lock()
            && let Some(bar) = &state.bar
        {
            bar.finish_and_clear();
        }
    }
}

/// Counts the lines written through it.
struct CountingWriter {
    inner: Box<dyn Write + Send>,
    progress: Progress,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        let lines = buf[..written].iter().filter(|b| **b == b'\n').count();
        self.progress.advance(lines as u64);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.progress.advance(read as u64);
        Ok(read)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod progress_tests {
    use super::*;

    fn hidden() -> Progress {
        Progress::with(ProgressState { what: "t", unit: "u", total: 0, done: 0, bar: None, next_line: None })
    }

    #[test]
    fn the_writer_counts_lines_and_passes_bytes_through() {
        let progress = hidden();
        let mut writer = CountingWriter { inner: Box::new(Vec::new()), progress: progress.clone() };
        write!(writer, "{{\"entry\":1}}\n{{\"entry\":").unwrap();
        writeln!(writer, "2}}").unwrap();
        writer.flush().unwrap();
        assert_eq!(progress.done(), 2);
    }

    #[test]
    fn the_reader_counts_bytes_and_passes_them_through() {
        let progress = hidden();
        let mut reader = CountingReader { inner: &b"line one\nline two\n"[..], progress: progress.clone() };
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "line one\nline two\n");
        assert_eq!(progress.done(), 18);
    }
}
