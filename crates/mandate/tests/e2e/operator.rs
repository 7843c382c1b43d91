//! Operator surface: `/metrics` (token outcomes, latency histograms, audit queue depth,
//! revocations made by the CLI), `/healthz` and `/readyz`, request ids in responses, audit
//! events and JSON logs, and the admin API's OpenAPI document.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::harness::{RESOURCE, Server, serve_command};

async fn metrics(server: &Server) -> String {
    let response = server.http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    response.text().await.unwrap()
}

/// The value of the sample whose name and labels are exactly `series`, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_tokens_refusals_latency_queue_depth_and_cli_revocations() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let before = metrics(&server).await;
    let issued = "mandate_tokens_issued_total{grant_type=\"client_credentials\"}";
    assert_eq!(sample(&before, issued), None, "nothing issued yet");
    for _ in 0..3 {
        server.token(&id, &secret).await;
    }
    for _ in 0..2 {
        let refused = server
            .http
            .post(server.url("/oauth2/token"))
            .basic_auth(&id, Some("wrong-secret"))
            .form(&[("grant_type", "client_credentials"), ("resource", RESOURCE)])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    }
    let unknown = server
        .http
        .post(server.url("/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "urn:example:made-up")])
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    let text = metrics(&server).await;
    assert_eq!(sample(&text, issued), Some(3.0), "{text}");
    let refused = "mandate_tokens_refused_total{grant_type=\"client_credentials\",reason=\"invalid_client\"}";
    assert_eq!(sample(&text, refused), Some(2.0), "{text}");
    let other = "mandate_tokens_refused_total{grant_type=\"other\",reason=\"unsupported_grant_type\"}";
    assert_eq!(sample(&text, other), Some(1.0), "{text}");
    assert!(!text.contains("made-up"), "request input never becomes a label value");
    let token_route = "method=\"POST\",route=\"/oauth2/token\",status=\"200\"";
    assert_eq!(sample(&text, &format!("mandate_http_request_duration_seconds_count{{{token_route}}}")), Some(3.0));
    assert_eq!(
        sample(&text, &format!("mandate_http_request_duration_seconds_bucket{{le=\"+Inf\",{token_route}}}")),
        Some(3.0),
        "{text}"
    );
    assert!(sample(&text, "mandate_audit_queue_depth").is_some_and(|depth| depth >= 0.0), "{text}");
    assert!(sample(&text, "mandate_audit_entries").is_some_and(|n| n > 0.0), "{text}");

    // A revocation made by another process (the CLI) is counted from the shared audit log.
    let agent_revocations = "mandate_revocations_total{kind=\"agent\"}";
    assert_eq!(sample(&text, agent_revocations), None);
    server.cli(&["revoke", "--agent", "bot"]);
    let text = metrics(&server).await;
    assert_eq!(sample(&text, agent_revocations), Some(1.0), "{text}");
    server.cli(&["revoke", "--agent", "bot"]);
    assert!(!server.cli_raw(&["revoke", "--agent", "nobody"]).status.success(), "unknown agents are refused");
    let text = metrics(&server).await;
    assert_eq!(sample(&text, agent_revocations), Some(2.0), "refused revocations are not counted: {text}");
}

#[tokio::test]
async fn health_and_readiness_answer_without_credentials() {
    let server = Server::start();
    let health = server.http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["checks"]["audit_writer"], "ok");
}

#[tokio::test]
async fn request_ids_are_echoed_and_become_the_audit_correlation_id() {
    let server = Server::start();
    let chosen = "op-test-42.a_b";
    let response = server
        .http
        .post(server.url("/admin/api/v1/owners"))
        .bearer_auth(&server.admin)
        .header("x-request-id", chosen)
        .json(&serde_json::json!({"name": "carol"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], chosen);
    let events = server.audit_events();
    let created = events.iter().find(|e| e["action"] == "registry.owner.create").expect("the owner creation event");
    assert_eq!(created["correlation_id"], chosen);

    // An id that is too long or has odd characters is replaced, never echoed; 404s get one too.
    let odd = "x".repeat(65);
    let response = server.http.get(server.url("/no/such/path")).header("x-request-id", &odd).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let given = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(given, odd);
    assert!(uuid::Uuid::parse_str(given).is_ok(), "{given}");
}

/// With `MANDATE_LOG_FORMAT=json`, each stderr line is a JSON object, and lines logged while a
/// request is handled carry its request id.
#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut command =
        serve_command(dir.path(), &[("MANDATE_LOG_FORMAT", "json"), ("MANDATE_LOG", "info,mandate_server=debug")]);
    command.args(["--listen", "127.0.0.1:0"]);
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr_lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let collected = Arc::clone(&stderr_lines);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            collected.lock().unwrap().push(line);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("  issuer:").map(|rest| rest.trim().to_owned()))
        .expect("server printed its issuer");
    std::thread::spawn(move || for _ in lines {});

    let id = "json-log-check-1";
    let http = reqwest::Client::new();
    let response = http.get(format!("{base}/healthz")).header("x-request-id", id).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let mut found = None;
    for _ in 0..100 {
        found = stderr_lines.lock().unwrap().iter().find(|l| l.contains(id)).cloned();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = found.expect("a log line with the request id");
    let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(parsed["span"]["request_id"], id, "{parsed}");
    assert_eq!(parsed["fields"]["route"], "/healthz", "{parsed}");
    let all = stderr_lines.lock().unwrap();
    assert!(!all.is_empty());
    for line in all.iter() {
        assert!(serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()), "not a JSON object: {line}");
    }
}

#[tokio::test]
async fn the_openapi_document_is_served_without_credentials() {
    let server = Server::start();
    let response = server.http.get(server.url("/admin/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/agents"]["post"].is_object());
    // The API it describes still needs the credential.
    let listed = server.http.get(server.url("/admin/api/v1/agents")).send().await.unwrap();
    assert_eq!(listed.status(), 401);
}

/// Found by schemathesis: a huge `activate_in_secs` overflowed the millisecond arithmetic. Out of
/// range leads (and unknown algorithms) are refused with 400 and audited.
#[tokio::test]
async fn key_rotation_refuses_an_out_of_range_lead() {
    let server = Server::start();
    for body in [
        serde_json::json!({"alg": "EdDSA", "activate_in_secs": i64::MAX}),
        serde_json::json!({"alg": "EdDSA", "activate_in_secs": -1}),
        serde_json::json!({"alg": "RS256"}),
    ] {
        let response = server
            .http
            .post(server.url("/admin/api/v1/keys/rotate"))
            .bearer_auth(&server.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_request", "{body}");
    }
    let refused = server.audit_events().into_iter().filter(|e| e["action"] == "key.rotate" && e["decision"] == "deny");
    assert_eq!(refused.count(), 3);
    let rotated = server
        .http
        .post(server.url("/admin/api/v1/keys/rotate"))
        .bearer_auth(&server.admin)
        .json(&serde_json::json!({"alg": "ES256", "activate_in_secs": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
}
