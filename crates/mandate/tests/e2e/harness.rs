//! Boots `mandate serve` on an ephemeral port with its own data directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

pub const RESOURCE: &str = "https://api.example.test";

pub struct Server {
    child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub http: reqwest::Client,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_mandate")
}

impl Server {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), &[])
    }

    /// Starts on `dir` (possibly already initialised) with extra environment variables.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        Self::start_at(dir, env, "127.0.0.1:0")
    }

    pub fn start_at(dir: tempfile::TempDir, env: &[(&str, &str)], listen: &str) -> Self {
        let mut command = serve_command(dir.path(), env);
        command.args(["--listen", listen]);
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut base = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("  issuer:") {
                base = Some(rest.trim().to_owned());
            }
            if line.starts_with("  audit key:") {
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let base = base.expect("server printed its issuer");
        let admin = std::fs::read_to_string(dir.path().join("data/admin-token")).unwrap().trim().to_owned();
        Self { child, base, dir, admin, http: reqwest::Client::new() }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Runs a CLI command against this server's data directory; panics unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_env(&[], args)
    }

    pub fn cli_raw(&self, args: &[&str]) -> Output {
        self.cli_raw_env(&[], args)
    }

    /// A CLI command with extra environment (the server's own config, for instance).
    pub fn cli_env(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.cli_raw_env(env, args);
        assert!(out.status.success(), "mandate {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn cli_raw_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut command = Command::new(bin());
        command.envs(env.iter().copied()).arg("--data-dir").arg(self.data_dir()).args(args);
        command.output().unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.cli(&all)).unwrap()
    }

    /// Registers owner `alice`, resource [`RESOURCE`] (read, write) and agent `name` (read).
    pub fn agent_with_client(&self, name: &str, auth: &str) -> (String, String) {
        if self.cli_raw(&["owner", "create", "alice"]).status.success() {
            self.cli(&["resource", "create", RESOURCE, "--scope", "read", "--scope", "write"]);
        }
        self.cli(&["agent", "create", name, "--owner", "alice", "--scope", "read"]);
        let client = self.cli_json(&["client", "create", "--agent", name, "--auth", auth]);
        (client["client_id"].as_str().unwrap().to_owned(), client["client_secret"].as_str().unwrap_or("").to_owned())
    }

    pub async fn token(&self, id: &str, secret: &str) -> String {
        let response = self
            .http
            .post(self.url("/oauth2/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials"), ("resource", RESOURCE)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn introspect(&self, token: &str) -> Value {
        self.http
            .post(self.url("/oauth2/introspect"))
            .bearer_auth(&self.admin)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every audit event, in order, from a fresh export.
    pub fn audit_events(&self) -> Vec<Value> {
        let path = self.dir.path().join(format!("export-{}.jsonl", uuid_like()));
        self.cli(&["audit", "export", "--out", path.to_str().unwrap()]);
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).unwrap().get("entry").cloned())
            .collect()
    }

    pub fn stop(mut self) -> tempfile::TempDir {
        terminate(&mut self.child);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "server exited with {status}");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        std::mem::forget(self);
        dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve_command(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(bin());
    command.arg("--data-dir").arg(dir.join("data")).arg("serve");
    command.env("MANDATE_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A loopback address with a port that was free a moment ago.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The claims of a JWT, decoded without verification (the server is what verifies).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Wall-clock Unix seconds, for claims of tokens the tests sign themselves.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// 128 random bits, base64url: `jti`s and other one-time ids.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    mandate_crypto::secret::fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn header(token: &str) -> Value {
    let head = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap()
}
