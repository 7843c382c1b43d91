//! The binary on PostgreSQL (`--database postgres://…`): the same flow as on SQLite, and two
//! processes sharing one database append to one audit chain.

use std::process::Command;

use crate::harness::{RESOURCE, Server};

fn database_url() -> String {
    std::env::var("MANDATE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema, dropped on drop, and a URL whose connections use it.
struct Schema {
    name: String,
}

impl Schema {
    fn create() -> Self {
        let name = format!(
            "e2e_{}_{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        );
        psql(&format!("CREATE SCHEMA {name}"));
        Self { name }
    }

    fn url(&self) -> String {
        let base = database_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        format!("{base}{separator}options=-csearch_path%3D{}", self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
    }
}

fn psql(sql: &str) {
    let out =
        Command::new("psql").arg(database_url()).args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql]).output().unwrap();
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn serves_tokens_and_one_audit_chain_from_postgres() {
    let schema = Schema::create();
    let url = schema.url();
    let server = Server::start_in(tempfile::tempdir().unwrap(), &[("MANDATE_DATABASE", &url)]);
    let env = [("MANDATE_DATABASE", url.as_str())];
    let cli = |args: &[&str]| server.cli_env(&env, args);
    cli(&["owner", "create", "alice"]);
    cli(&["resource", "create", RESOURCE, "--scope", "read"]);
    cli(&["agent", "create", "bot", "--owner", "alice", "--scope", "read"]);
    let client: serde_json::Value =
        serde_json::from_str(&cli(&["--json", "client", "create", "--agent", "bot"])).unwrap();
    let (id, secret) = (client["client_id"].as_str().unwrap(), client["client_secret"].as_str().unwrap());

    // The server and the CLI are two processes appending to the same chain concurrently.
    let token = server.token(id, secret).await;
    assert_eq!(server.introspect(&token).await["active"], true);
    cli(&["revoke", "--agent", "bot"]);
    assert_eq!(server.introspect(&token).await["active"], false);

    let export = server.dir.path().join("audit.jsonl");
    cli(&["audit", "export", "--out", export.to_str().unwrap()]);
    let key = cli(&["audit", "key"]);
    let verify = Command::new(crate::harness::bin())
        .args(["audit", "verify"])
        .arg(&export)
        .args(["--key", key.trim()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{report}");
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(text.contains("\"action\":\"revoke.agent\""));
    // Nothing landed in SQLite: the data directory holds keys and credentials only.
    assert!(!server.data_dir().join("mandate.db").exists());
}
