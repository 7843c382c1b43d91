//! `mandate demo`: the whole system on loopback in one process — an IdP and a resource
//! authorization server (both real Mandate servers), the Workload API, a governed gateway, an MCP
//! tools server and a three-hop call chain — then a seven-step story, each step checked.

mod check;
mod services;
mod stack;
mod story;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Settings;

/// How long the services get to stop (final checkpoints, open connections) before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print only the numbered step lines, not their evidence.
    #[arg(long)]
    quiet: bool,
    /// Keep the temporary data directory (databases, audit export) and print its path.
    #[arg(long)]
    keep: bool,
}

/// Runs the demo; exit 0 only when every step showed its evidence. The data directory is
/// removed at the end whatever happened (Ctrl-C and failures included) unless `--keep`.
pub async fn demo(settings: &Settings, args: DemoArgs) -> anyhow::Result<ExitCode> {
    // Listening before the directory exists: from then on, Ctrl-C or SIGTERM means an orderly stop.
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let dir =
        tempfile::Builder::new().prefix("mandate-demo-").tempdir().context("creating the demo's data directory")?;
    let out = Printer { quiet: args.quiet };
    out.line(&format!("Mandate demo: every service on loopback, data in {}", dir.path().display()));
    let tasks = Tasks::new();
    let outcome = tokio::select! {
        outcome = story::play(dir.path(), settings, &tasks, &out) => outcome,
        _ = interrupt.recv() => Err(Stop::Interrupted),
        _ = terminate.recv() => Err(Stop::Interrupted),
    };
    tasks.stop().await;
    let code = match outcome {
        Ok(()) => {
            out.gap();
            out.line("All 7 steps showed their evidence.");
            ExitCode::SUCCESS
        }
        Err(Stop::Mismatch(mismatch)) => {
            println!("   FAILED: {mismatch}");
            ExitCode::FAILURE
        }
        Err(Stop::Failed(error)) => {
            println!("   FAILED: {error:#}");
            ExitCode::FAILURE
        }
        Err(Stop::Interrupted) => {
            println!("interrupted");
            ExitCode::from(130)
        }
    };
    if args.keep {
        let kept: PathBuf = dir.keep();
        println!("data kept in {}", kept.display());
    } else {
        let path = dir.path().to_owned();
        dir.close().with_context(|| format!("removing {}", path.display()))?;
        out.line(&format!("Removed {}.", path.display()));
    }
    Ok(code)
}

/// Why the story stopped early.
#[derive(Debug)]
pub enum Stop {
    /// A step's evidence was not what it should be.
    Mismatch(check::Mismatch),
    /// Something the story needed did not work at all.
    Failed(anyhow::Error),
    Interrupted,
}

impl From<check::Mismatch> for Stop {
    fn from(mismatch: check::Mismatch) -> Self {
        Self::Mismatch(mismatch)
    }
}

impl From<anyhow::Error> for Stop {
    fn from(error: anyhow::Error) -> Self {
        Self::Failed(error)
    }
}

/// Step lines always; evidence lines unless `--quiet`.
pub struct Printer {
    quiet: bool,
}

impl Printer {
    pub fn line(&self, text: &str) {
        println!("{text}");
    }

    pub fn step(&self, number: u8, title: &str) {
        self.gap();
        println!("{number}. {title}");
    }

    /// A blank line between a step's evidence and what follows.
    pub fn gap(&self) {
        if !self.quiet {
            println!();
        }
    }

    pub fn evidence(&self, text: &str) {
        if !self.quiet {
            println!("   {text}");
        }
    }
}

/// The demo's background services: one shutdown signal for all, and their tasks to wait for.
pub struct Tasks {
    shutdown: watch::Sender<bool>,
    running: Mutex<Vec<Service>>,
}

/// A running service: its name for messages, and its task.
type Service = (&'static str, JoinHandle<anyhow::Result<()>>);

impl Tasks {
    fn new() -> Self {
        Self { shutdown: watch::Sender::new(false), running: Mutex::default() }
    }

    /// Resolves once [`Tasks::stop`] begins.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.shutdown.subscribe();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    pub fn spawn(&self, name: &'static str, service: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        let handle = tokio::spawn(service);
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((name, handle));
    }

    /// Whether a service already ended (it failed to start, or stopped on its own).
    pub fn ended(&self) -> Option<&'static str> {
        let running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.iter().find(|(_, handle)| handle.is_finished()).map(|(name, _)| *name)
    }

    /// Signals every service to stop and waits for them; those still running after
    /// [`STOP_GRACE`] are aborted. Errors are reported on standard error.
    async fn stop(&self) {
        self.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (name, mut handle) in running {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => eprintln!("demo: {name} stopped with an error: {error:#}"),
                Ok(Err(join)) => eprintln!("demo: {name} panicked or was cancelled: {join}"),
                Err(_) => {
                    handle.abort();
                    eprintln!("demo: {name} did not stop within {} s; aborted", STOP_GRACE.as_secs());
                }
            }
        }
    }
}
