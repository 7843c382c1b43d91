//! `mandate broker ca` and `mandate broker run` as processes: a vault made with the vault CLI,
//! a rules file, an agent request with only placeholders through the proxy, the real
//! credentials at the upstream, and `broker.*` events in the server's audit log.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::Value;

use crate::harness::{Server, bin, free_address};

const PASSPHRASE: &str = "correct horse battery staple";
const WORK_SECRET: &str = "ghp_e2e_work_REAL_0001";
const PERSONAL_SECRET: &str = "ghp_e2e_personal_REAL_0002";
const AGENT: &str = "spiffe://mandate.local/agent/coder";

/// A running `mandate broker run`; killed on drop.
struct BrokerProcess {
    child: Child,
    url: String,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker_command(server: &Server) -> Command {
    let mut command = Command::new(bin());
    command.arg("--data-dir").arg(server.data_dir()).env("MANDATE_LOG", "warn");
    command.env("MANDATE_VAULT_PASSPHRASE", PASSPHRASE);
    command.arg("broker");
    command
}

fn vault_add(server: &Server, broker_dir: &Path, name: &str, secret: &str) {
    let mut child = broker_command(server)
        .args(["vault", "add", name, "--kind", "api-key", "--broker-dir"])
        .arg(broker_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{secret}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "vault add: {}", String::from_utf8_lossy(&out.stderr));
}

fn start_broker(server: &Server, broker_dir: &Path) -> BrokerProcess {
    let mut child = broker_command(server)
        .args(["run", "--listen", &free_address(), "--agent", AGENT, "--broker-dir"])
        .arg(broker_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the broker printed its address").unwrap();
    let url = first.strip_prefix("Mandate broker listening on ").expect("the listening line").to_owned();
    std::thread::spawn(move || for _ in lines {});
    BrokerProcess { child, url }
}

/// A plain-HTTP upstream that keeps the Authorization header of every request.
async fn upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/user",
        get(move |headers: HeaderMap| {
            let shared = Arc::clone(&shared);
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                shared.lock().unwrap().push(auth);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

#[tokio::test]
async fn the_broker_injects_vault_credentials_and_audits_each_use() {
    let server = Server::start();
    server.agent_with_client("coder", "client_secret_basic");
    let broker_dir = server.dir.path().join("broker");

    // Without its CA the broker refuses to start, and says how to make one.
    std::fs::create_dir_all(&broker_dir).unwrap();
    let refused = broker_command(&server)
        .args(["run", "--listen", &free_address(), "--broker-dir"])
        .arg(&broker_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("mandate broker ca"));

    let exported = server.dir.path().join("broker-ca.pem");
    let ca = broker_command(&server)
        .args(["ca", "--broker-dir"])
        .arg(&broker_dir)
        .arg("--out")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(ca.status.success(), "{}", String::from_utf8_lossy(&ca.stderr));
    let pem = String::from_utf8(ca.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), pem);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(broker_dir.join("ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let init = broker_command(&server).args(["vault", "init", "--broker-dir"]).arg(&broker_dir).output().unwrap();
    assert!(init.status.success(), "vault init: {}", String::from_utf8_lossy(&init.stderr));
    vault_add(&server, &broker_dir, "github:work", WORK_SECRET);
    vault_add(&server, &broker_dir, "github:personal", PERSONAL_SECRET);
    std::fs::write(
        broker_dir.join("rules.toml"),
        r#"
        unmatched = "refuse"
        [[rule]]
        host = "127.0.0.1"
        connection = "github:work"
        connections = ["github:personal"]
        allow_http = true
        "#,
    )
    .unwrap();

    let (upstream, seen) = upstream().await;
    let broker = start_broker(&server, &broker_dir);
    let client = reqwest::Client::builder().proxy(reqwest::Proxy::http(&broker.url).unwrap()).build().unwrap();
    let url = format!("{upstream}/user");

    let work = client.get(&url).bearer_auth("MANDATE_PLACEHOLDER_GITHUB_WORK").send().await.unwrap();
    assert_eq!(work.status(), 200);
    let personal = client
        .get(&url)
        .bearer_auth("MANDATE_PLACEHOLDER_GITHUB_WORK")
        .header("Mandate-Connection", "github:personal")
        .send()
        .await
        .unwrap();
    assert_eq!(personal.status(), 200);
    let unknown = client.get(&url).bearer_auth("MANDATE_PLACEHOLDER_SOMETHING_ELSE").send().await.unwrap();
    assert_eq!(unknown.status(), 403);
    assert_eq!(
        *seen.lock().unwrap(),
        [format!("Bearer {WORK_SECRET}"), format!("Bearer {PERSONAL_SECRET}")],
        "the upstream got the real credentials, and nothing for the unknown placeholder"
    );

    let events: Vec<Value> = server
        .cli(&["--json", "audit", "query", "--action", "broker."])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap_or_default().to_owned();
            (field("action"), field("decision"), field("detail"))
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("broker.inject".into(), "allow".into(), "connection=github:work method=GET path=/user".into()),
            ("broker.inject".into(), "allow".into(), "connection=github:personal method=GET path=/user".into()),
            ("broker.deny".into(), "deny".into(), "connection=github:work method=GET path=/user".into()),
        ]
    );
    for event in &events {
        assert_eq!(event["agent"], AGENT);
        assert_eq!(event["owner"], "alice");
        assert_eq!(event["resource"], upstream.as_str());
    }
    assert_eq!(events[2]["reason"], "unknown_placeholder");
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(WORK_SECRET) && !all.contains(PERSONAL_SECRET));
    drop(broker);
}
