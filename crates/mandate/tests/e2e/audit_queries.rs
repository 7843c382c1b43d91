//! Accountability through the CLI and the admin API: receipts that verify offline and fail once
//! changed, fork (rollback) detection against a saved checkpoint, and owner-bound queries.
//! (`--txn` queries are covered with real Txn-Tokens in `txn_token.rs` and `gateway.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::{Server, bin, claims};

const BOT: &str = "spiffe://mandate.local/agent/bot";

/// Runs an offline audit command (no data directory): (success, stdout).
fn offline(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin()).arg("audit").args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn query(server: &Server, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "audit", "query"];
    all.extend_from_slice(args);
    server.cli(&all).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A server where agent `bot` (owner alice) got `count` tokens; returns it and their jtis.
async fn server_with_tokens(count: usize) -> (Server, Vec<String>) {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let mut jtis = Vec::new();
    for _ in 0..count {
        let token = server.token(&id, &secret).await;
        jtis.push(claims(&token)["jti"].as_str().unwrap().to_owned());
    }
    (server, jtis)
}

fn export(server: &Server, name: &str) -> PathBuf {
    let path = server.dir.path().join(name);
    server.cli(&["audit", "export", "--out", path_str(&path)]);
    path
}

#[tokio::test]
async fn a_receipt_verifies_offline_and_fails_once_changed() {
    let (server, jtis) = server_with_tokens(3).await;
    let key = server.cli(&["audit", "key"]).trim().to_owned();
    let issued = query(&server, &["--jti", &jtis[1], "--action", "token.issue"]);
    assert_eq!(issued.len(), 1, "{issued:?}");
    let seq = issued[0]["seq"].as_u64().unwrap().to_string();

    let receipt = server.dir.path().join("receipt.json");
    server.cli(&["audit", "receipt", &seq, "--out", path_str(&receipt)]);
    let (ok, message) = offline(&["verify-receipt", path_str(&receipt), "--key", &key]);
    assert!(ok && message.starts_with("OK: event token.issue allow is entry "), "{message}");
    let text = std::fs::read_to_string(&receipt).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["entry"]["jti"], jtis[1].as_str());
    assert_eq!(value["format"], "mandate-audit-receipt/v1");
    // Without --out the receipt goes to stdout, byte for byte the same form.
    let printed = server.cli(&["audit", "receipt", &seq]);
    assert!(printed.ends_with('\n') && serde_json::from_str::<Value>(&printed).unwrap()["index"] == value["index"]);

    let changes = [
        ("owner", text.replacen("\"owner\":\"alice\"", "\"owner\":\"alicf\"", 1)),
        ("proof hash", {
            let at = text.find("\"inclusion\":[\"").unwrap() + 14;
            let flipped = if &text[at..=at] == "0" { "1" } else { "0" };
            format!("{}{flipped}{}", &text[..at], &text[at + 1..])
        }),
        (
            "index",
            text.replacen(&format!("\"index\":{seq}"), &format!("\"index\":{}", seq.parse::<u64>().unwrap() + 1), 1),
        ),
        ("whitespace", text.replacen(",", ", ", 1)),
    ];
    for (what, changed) in changes {
        assert_ne!(changed, text, "{what}");
        let path = server.dir.path().join("changed.json");
        std::fs::write(&path, changed).unwrap();
        let (ok, message) = offline(&["verify-receipt", path_str(&path), "--key", &key]);
        assert!(!ok && message.starts_with("FAIL: "), "{what}: {message}");
    }

    let other = Server::start();
    let other_key = other.cli(&["audit", "key"]).trim().to_owned();
    let (ok, message) = offline(&["verify-receipt", path_str(&receipt), "--key", &other_key]);
    assert!(!ok, "another log's key accepted the receipt: {message}");
    assert!(!server.cli_raw(&["audit", "receipt", "999999"]).status.success(), "no such event");
}

#[tokio::test]
async fn an_export_must_extend_a_saved_checkpoint() {
    let (server, _) = server_with_tokens(2).await;
    let key = server.cli(&["audit", "key"]).trim().to_owned();
    let early = export(&server, "early.jsonl");
    let saved = server.dir.path().join("checkpoint.txt");
    std::fs::write(&saved, last_checkpoint(&early)).unwrap();

    server.cli(&["owner", "create", "bob"]);
    let later = export(&server, "later.jsonl");
    let (ok, message) = offline(&["verify", path_str(&later), "--key", &key, "--trusted-checkpoint", path_str(&saved)]);
    assert!(ok, "{message}");

    // Rolled back: the earlier export cannot extend a checkpoint published after it.
    std::fs::write(&saved, last_checkpoint(&later)).unwrap();
    let (ok, message) = offline(&["verify", path_str(&early), "--key", &key, "--trusted-checkpoint", path_str(&saved)]);
    assert!(!ok && message.contains("entries") && message.contains("were removed"), "{message}");

    // A checkpoint that does not verify under the key is an error, not a pass.
    std::fs::write(&saved, last_checkpoint(&later).replace('\u{2014}', "-")).unwrap();
    let (ok, _) = offline(&["verify", path_str(&later), "--key", &key, "--trusted-checkpoint", path_str(&saved)]);
    assert!(!ok);
}

fn last_checkpoint(export: &Path) -> String {
    let text = std::fs::read_to_string(export).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["checkpoint"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn cli_queries_answer_who_did_what_for_whom() {
    let (server, jtis) = server_with_tokens(2).await;
    server.cli(&["agent", "create", "other", "--owner", "alice", "--scope", "read"]);

    // What did agent bot do: its issuances, by name or SPIFFE ID, and nothing of `other`.
    let by_name = query(&server, &["--agent", "bot"]);
    assert!(by_name.len() >= 2 && by_name.iter().all(|e| e["agent"] == BOT), "{by_name:?}");
    assert_eq!(query(&server, &["--agent", BOT]), by_name);
    // On behalf of owner alice: bot's tokens and the creation of `other`.
    let for_alice = query(&server, &["--owner", "alice"]);
    assert!(for_alice.iter().any(|e| e["action"] == "token.issue" && e["agent"] == BOT));
    assert!(for_alice.iter().any(|e| e["action"] == "registry.agent.create"));
    assert!(query(&server, &["--owner", "nobody"]).is_empty());
    // Who is responsible for a token: its issuance names agent, owner and client.
    let by_jti = query(&server, &["--jti", &jtis[0]]);
    assert_eq!(by_jti.len(), 1, "{by_jti:?}");
    let client = by_jti[0]["client"].as_str().unwrap();
    assert_eq!((&by_jti[0]["agent"], &by_jti[0]["owner"]), (&Value::from(BOT), &Value::from("alice")));
    assert_eq!(query(&server, &["--client", client, "--action", "token."]).len(), 2);
    assert!(
        query(&server, &["--action", "registry."])
            .iter()
            .all(|e| e["action"].as_str().unwrap().starts_with("registry."))
    );
    assert_eq!(query(&server, &["--agent", "bot", "--limit", "1"]).len(), 1);

    // Time ranges: split the log at the second issuance.
    let second = query(&server, &["--jti", &jtis[1]]).remove(0);
    let ts = second["ts"].as_str().unwrap();
    let from = query(&server, &["--agent", "bot", "--since", ts]);
    let before = query(&server, &["--agent", "bot", "--until", ts]);
    assert!(from.iter().any(|e| e["jti"] == jtis[1].as_str()) && !before.iter().any(|e| e["jti"] == jtis[1].as_str()));
    assert_eq!(from.len() + before.len(), by_name.len());

    // Human form names the responsible parties.
    let human = server.cli(&["audit", "query", "--jti", &jtis[0]]);
    assert!(human.contains("token.issue allow") && human.contains("owner=alice") && human.contains(client), "{human}");
    for bad in
        [&["--since", "yesterday"][..], &["--agent", "bot", "--limit", "0"], &["--until", "2026-13-01T00:00:00Z"]]
    {
        let mut args = vec!["audit", "query"];
        args.extend_from_slice(bad);
        assert!(!server.cli_raw(&args).status.success(), "{bad:?} accepted");
    }
}

async fn events(server: &Server, query: String) -> (u16, Value) {
    let url = server.url(&format!("/admin/api/v1/audit/events?{query}"));
    let response = server.http.get(url).bearer_auth(&server.admin).send().await.unwrap();
    (response.status().as_u16(), response.json::<Value>().await.unwrap())
}

#[tokio::test]
async fn the_admin_api_answers_the_same_queries() {
    let (server, jtis) = server_with_tokens(3).await;
    let get = |query: &str| events(&server, query.to_owned());
    let (status, body) = get(&format!("jti={}", jtis[2])).await;
    assert_eq!(status, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!((&events[0]["agent"], &events[0]["owner"]), (&Value::from(BOT), &Value::from("alice")));
    assert!(body["next"].is_null());

    let (_, body) = get("agent=bot&action=token.").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    let (_, page) = get("owner=alice&limit=2").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let next = page["next"].as_u64().unwrap();
    let (_, rest) = get(&format!("owner=alice&from={next}")).await;
    let first_of_rest = rest["events"][0]["seq"].as_u64().unwrap();
    assert!(first_of_rest >= next && first_of_rest > page["events"][1]["seq"].as_u64().unwrap());
    let (_, none) = get("since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z").await;
    assert_eq!(none["events"].as_array().unwrap().len(), 0);

    for bad in ["since=yesterday", "limit=0", "limit=100000", "agnet=bot", "jti=a&jti=b", "from=x", "owner="] {
        let (status, body) = get(bad).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{bad}: {body}");
    }
    let unauthenticated = server.http.get(server.url("/admin/api/v1/audit/events?agent=bot")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // Reading the log is itself on record, refusals included.
    let queries = query(&server, &["--action", "audit.query"]);
    assert!(queries.iter().any(|e| e["decision"] == "allow" && e["detail"] == "agent=bot&action=token."));
    assert!(queries.iter().any(|e| e["decision"] == "deny" && e["reason"] == "invalid_request"));
}

#[test]
fn a_jti_beginning_with_a_dash_is_a_value_not_a_flag() {
    // Token ids are base64url: one in 64 begins with '-'.
    let server = Server::start();
    let answer = server.cli_raw(&["--json", "audit", "query", "--jti", "-2fC6SpmM_rQML93Egtjyg"]);
    assert!(answer.status.success(), "{}", String::from_utf8_lossy(&answer.stderr));
    assert!(String::from_utf8_lossy(&answer.stdout).trim().is_empty(), "no event has that jti");
}

/// `mandate audit query | head -1` closes the pipe early: the CLI stops quietly (exit 0) instead
/// of panicking on the broken pipe.
#[tokio::test]
async fn a_query_whose_reader_goes_away_ends_quietly() {
    let (server, _) = server_with_tokens(2).await;
    let mut child = Command::new(bin())
        .arg("--data-dir")
        .arg(server.data_dir())
        .args(["audit", "query", "--agent", "bot"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the first line is written, so that write certainly fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
