//! Cedar policy at the authorization server: sets replaced through the admin API and the CLI,
//! validated first (a bad set changes nothing), deciding every token issuance and exchange, and
//! every decision audited with the ids of the policies that made it.

use serde_json::Value;

use crate::harness::{RESOURCE, Server};

const READ_ONLY: &str = r#"
@id("agents-read")
permit(principal is Mandate::Agent, action == Mandate::Action::"issue", resource == Mandate::Resource::"https://api.example.test")
when { context.scopes.containsAll(["read"]) && ["read"].containsAll(context.scopes) };
"#;

const FORBID_BOT: &str = r#"
@id("agents-read")
permit(principal is Mandate::Agent, action == Mandate::Action::"issue", resource);
@id("no-bot")
forbid(principal == Mandate::Agent::"spiffe://mandate.local/agent/bot", action, resource);
"#;

async fn put_policies(server: &Server, source: &str) -> (u16, Value) {
    let response = server
        .http
        .put(server.url("/admin/api/v1/policies"))
        .bearer_auth(&server.admin)
        .header("content-type", "text/plain")
        .body(source.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn token_status(server: &Server, id: &str, secret: &str, scope: &str) -> (u16, Value) {
    let response = server
        .http
        .post(server.url("/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials"), ("resource", RESOURCE), ("scope", scope)])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn without_a_policy_set_issuance_is_unchanged() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let (status, _) = token_status(&server, &id, &secret, "read").await;
    assert_eq!(status, 200);
    let issued = server.audit_events().into_iter().find(|e| e["action"] == "token.issue").unwrap();
    assert!(!issued["detail"].as_str().unwrap_or("").contains("policy="), "no policy, no policy decision");
}

#[tokio::test]
async fn a_forbid_policy_refuses_issuance_and_the_decision_names_it() {
    let server = Server::start();
    let (bot, bot_secret) = server.agent_with_client("bot", "client_secret_basic");
    let (other, other_secret) = server.agent_with_client("helper", "client_secret_basic");
    let (status, body) = put_policies(&server, FORBID_BOT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["policies"], 2);

    let (status, body) = token_status(&server, &bot, &bot_secret, "read").await;
    assert_eq!(status, 400, "access_denied at the token endpoint is a 400 (RFC 6749 §5.2): {body}");
    assert_eq!(body["error"], "access_denied");
    assert!(body["error_description"].as_str().unwrap().contains("no-bot"), "{body}");
    let (status, _) = token_status(&server, &other, &other_secret, "read").await;
    assert_eq!(status, 200, "the forbid names one agent only");

    let events = server.audit_events();
    let refused = events
        .iter()
        .find(|e| e["action"] == "token.issue" && e["decision"] == "deny")
        .expect("the refusal is audited");
    assert_eq!(refused["detail"], "denied by policy no-bot");
    let allowed = events
        .iter()
        .find(|e| e["action"] == "token.issue" && e["decision"] == "allow")
        .expect("the issuance is audited");
    assert!(allowed["detail"].as_str().unwrap().contains("policy=allow ids=agents-read"), "{allowed}");
}

#[tokio::test]
async fn policy_conditions_see_the_requested_scopes() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    server.cli(&["agent", "create", "writer", "--owner", "alice", "--scope", "read", "--scope", "write"]);
    let writer = server.cli_json(&["client", "create", "--agent", "writer", "--auth", "client_secret_basic"]);
    let (writer_id, writer_secret) =
        (writer["client_id"].as_str().unwrap().to_owned(), writer["client_secret"].as_str().unwrap().to_owned());
    assert_eq!(put_policies(&server, READ_ONLY).await.0, 200);

    assert_eq!(token_status(&server, &id, &secret, "read").await.0, 200);
    let (status, body) = token_status(&server, &writer_id, &writer_secret, "read write").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("access_denied")), "write is not permitted: {body}");
    assert_eq!(token_status(&server, &writer_id, &writer_secret, "read").await.0, 200);
}

#[tokio::test]
async fn an_invalid_policy_set_is_refused_with_the_validators_message_and_the_old_set_keeps_deciding() {
    let server = Server::start();
    let (bot, bot_secret) = server.agent_with_client("bot", "client_secret_basic");
    assert_eq!(put_policies(&server, FORBID_BOT).await.0, 200);

    let unknown_attribute = r#"
@id("typo")
permit(principal is Mandate::Agent, action == Mandate::Action::"issue", resource) when { context.scopez.contains("read") };
"#;
    let syntax = "permit(principal, action resource);";
    let empty = "// nothing here\n";
    let unknown_action = r#"permit(principal, action == Mandate::Action::"delete_everything", resource);"#;
    for bad in [unknown_attribute, syntax, unknown_action, empty] {
        let (status, body) = put_policies(&server, bad).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_policy");
        assert!(!body["error_description"].as_str().unwrap().is_empty());
    }
    let (_, body) = put_policies(&server, unknown_attribute).await;
    assert!(body["error_description"].as_str().unwrap().contains("scopez"), "the validator names the problem: {body}");

    // The previous set still decides, and is still the stored one.
    assert_eq!(token_status(&server, &bot, &bot_secret, "read").await.0, 400);
    let shown: Value = server
        .http
        .get(server.url("/admin/api/v1/policies"))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["source"], FORBID_BOT);
    assert_eq!(shown["policies"], serde_json::json!(["agents-read", "no-bot"]));
    let refusals = server
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == "policy.replace" && e["decision"] == "deny")
        .count();
    assert_eq!(refusals, 5, "every refused replacement is audited");
}

#[tokio::test]
async fn the_cli_validates_offline_and_a_set_it_activates_reaches_the_running_server() {
    let server = Server::start();
    let (bot, bot_secret) = server.agent_with_client("bot", "client_secret_basic");
    let file = server.dir.path().join("policies.cedar");
    std::fs::write(&file, FORBID_BOT).unwrap();
    let bad = server.dir.path().join("bad.cedar");
    std::fs::write(&bad, "forbid(principal, action, resource) when { context.nope };").unwrap();

    let checked = server.cli_raw(&["policy", "validate", bad.to_str().unwrap()]);
    assert!(!checked.status.success());
    assert!(String::from_utf8_lossy(&checked.stderr).contains("nope"));
    assert!(server.cli(&["policy", "validate", file.to_str().unwrap()]).contains("valid: 2 policies"));
    assert!(server.cli(&["policy", "schema"]).contains("namespace Mandate"));

    assert_eq!(token_status(&server, &bot, &bot_secret, "read").await.0, 200);
    server.cli(&["policy", "set", file.to_str().unwrap()]);
    // The server reloads a changed set within a second (no sleep-and-assert: poll until it does).
    let mut refused = false;
    for _ in 0..50 {
        if token_status(&server, &bot, &bot_secret, "read").await.0 == 400 {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "the running server picked up the set activated by the CLI");
    assert!(server.cli(&["policy", "show"]).contains("no-bot"));
}

#[tokio::test]
async fn a_configured_policy_file_that_does_not_validate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.cedar");
    std::fs::write(&file, "permit(principal, action, resource) when { context.nope };").unwrap();
    let output = crate::harness::serve_command(dir.path(), &[("MANDATE_POLICY_FILE", file.to_str().unwrap())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nope"), "{}", String::from_utf8_lossy(&output.stderr));
}
