//! The example MCP server over real HTTP on 127.0.0.1:0, with tokens signed here: discovery
//! (401 challenge → metadata), the MCP handshake, tools, the step-up 403, and DPoP.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_core::ManualClock;
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey, random_token};
use mandate_example_mcp_resource::{guard_config, router};
use mandate_guard::dpop::access_token_hash;
use mandate_guard::{Guard, StaticKeys};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ISSUER: &str = "https://as.example";
const NOW: i64 = 1_800_000_000;

struct Server {
    base: String,
    key: SigningKey,
    http: reqwest::Client,
}

async fn server() -> Server {
    mandate_crypto::init().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let config = guard_config(&format!("{base}/mcp"), vec![ISSUER.into()], "notes:read notes:write").unwrap();
    let keys = StaticKeys::new(ISSUER, vec![key.public().clone()]);
    let guard = Guard::new(config, Arc::new(keys), Arc::new(ManualClock::at_ms(NOW * 1000)));
    let app = router(Arc::new(guard)).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { base, key, http: reqwest::Client::new() }
}

impl Server {
    fn token(&self, scope: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = json!({"iss": ISSUER, "sub": "spiffe://td/agent/bot", "aud": format!("{}/mcp", self.base),
                                "client_id": "c1", "scope": scope, "iat": NOW - 10, "exp": NOW + 300, "jti": "j1",
                                "act": {"sub": "spiffe://td/agent/helper"}});
        edit(&mut claims);
        sign_jwt(&self.key, "at+jwt", &claims).unwrap()
    }

    async fn post(&self, authorization: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/mcp", self.base))
            .header("authorization", authorization)
            .header("accept", "application/json, text/event-stream")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A JSON-RPC request with a Bearer token; the answer's status and body.
    async fn rpc(&self, token: &str, method: &str, params: Value) -> (StatusCode, Value) {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let response = self.post(&format!("Bearer {token}"), &body).await;
        (response.status(), response.json().await.unwrap_or(Value::Null))
    }
}

fn tool_text(result: &Value) -> Value {
    serde_json::from_str(result["result"]["content"][0]["text"].as_str().unwrap()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn an_unauthenticated_request_is_pointed_at_the_metadata() {
    let s = server().await;
    let response = s.http.post(format!("{}/mcp", s.base)).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> =
        response.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    let metadata = format!("{}/.well-known/oauth-protected-resource/mcp", s.base);
    assert_eq!(
        challenges[0],
        format!("Bearer resource_metadata=\"{metadata}\", scope=\"notes:read\""),
        "{challenges:?}"
    );
    assert!(challenges[1].starts_with("DPoP algs=\"EdDSA ES256\""), "{challenges:?}");

    let doc: Value = s.http.get(&metadata).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["resource"], format!("{}/mcp", s.base));
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    assert_eq!(doc["scopes_supported"], json!(["notes:read", "notes:write"]));
    assert_eq!(doc["dpop_signing_alg_values_supported"], json!(["EdDSA", "ES256"]));
    let root: Value = s
        .http
        .get(format!("{}/.well-known/oauth-protected-resource", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root, doc);
}

#[tokio::test]
async fn a_token_without_notes_read_or_for_another_resource_is_refused() {
    let s = server().await;
    let (status, _) = s.rpc(&s.token("notes:write", |_| {}), "ping", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) =
        s.rpc(&s.token("notes:read", |c| c["aud"] = json!("https://other.example/mcp")), "ping", json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn initialize_negotiates_the_version_and_opens_a_session() {
    let s = server().await;
    let token = s.token("notes:read", |_| {});
    let body = json!({"jsonrpc": "2.0", "id": "init", "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let response = s.post(&format!("Bearer {token}"), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let session = response.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
    assert!(session.is_some_and(|s| s.len() > 20));
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["id"], "init");
    assert_eq!(reply["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(reply["result"]["capabilities"], json!({"tools": {}}));
    assert_eq!(reply["result"]["serverInfo"]["name"], "mandate-example-mcp-resource");

    for (asked, answered) in [("2025-03-26", "2025-03-26"), ("1999-01-01", "2025-06-18")] {
        let (_, reply) = s.rpc(&token, "initialize", json!({"protocolVersion": asked})).await;
        assert_eq!(reply["result"]["protocolVersion"], answered, "{asked}");
    }
    let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = s.post(&format!("Bearer {token}"), &notification).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.bytes().await.unwrap().is_empty());
    let (status, reply) = s.rpc(&token, "ping", json!({})).await;
    assert_eq!((status, &reply["result"]), (StatusCode::OK, &json!({})));
}

#[tokio::test]
async fn tools_are_listed_and_whoami_shows_the_verified_caller() {
    let s = server().await;
    let token = s.token("notes:read", |_| {});
    let (_, reply) = s.rpc(&token, "tools/list", json!({})).await;
    let names: Vec<&str> =
        reply["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["whoami", "list_notes", "add_note"]);
    let (status, reply) = s.rpc(&token, "tools/call", json!({"name": "whoami", "arguments": {}})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["result"]["isError"], false);
    assert_eq!(
        tool_text(&reply),
        json!({"sub": "spiffe://td/agent/bot", "client_id": "c1", "scope": "notes:read",
               "act": {"sub": "spiffe://td/agent/helper"}, "jkt": null})
    );
}

#[tokio::test]
async fn add_note_needs_notes_write_and_answers_with_a_step_up_challenge() {
    let s = server().await;
    let narrow = s.token("notes:read", |_| {});
    let call = json!({"name": "add_note", "arguments": {"text": "buy milk"}});
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": call});
    let response = s.post(&format!("Bearer {narrow}"), &body).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let challenge = response.headers().get("www-authenticate").unwrap().to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert!(challenge.contains("scope=\"notes:read notes:write\""), "{challenge}");
    assert!(challenge.contains("resource_metadata="), "{challenge}");

    let wide = s.token("notes:read notes:write", |_| {});
    let (status, reply) = s.rpc(&wide, "tools/call", call).await;
    assert_eq!((status, &reply["result"]["isError"]), (StatusCode::OK, &json!(false)), "{reply}");
    let (_, reply) = s.rpc(&narrow, "tools/call", json!({"name": "list_notes"})).await;
    assert_eq!(tool_text(&reply), json!(["buy milk"]));
    let (_, reply) = s.rpc(&wide, "tools/call", json!({"name": "add_note", "arguments": {"text": ""}})).await;
    assert_eq!(reply["error"]["code"], -32602);
}

#[tokio::test]
async fn protocol_errors_get_json_rpc_and_http_errors() {
    let s = server().await;
    let token = s.token("notes:read", |_| {});
    let (status, reply) = s.rpc(&token, "resources/list", json!({})).await;
    assert_eq!((status, &reply["error"]["code"]), (StatusCode::OK, &json!(-32601)));
    let (_, reply) = s.rpc(&token, "tools/call", json!({"name": "rm_rf"})).await;
    assert_eq!(reply["error"]["code"], -32602);
    let response = s.post(&format!("Bearer {token}"), &json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}])).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = s.post(&format!("Bearer {token}"), &json!({"id": 1, "method": "ping"})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "jsonrpc 2.0 is required");
    let garbage = s
        .http
        .post(format!("{}/mcp", s.base))
        .header("authorization", format!("Bearer {token}"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert_eq!(garbage.json::<Value>().await.unwrap()["error"]["code"], -32700);
    let get = s.http.get(format!("{}/mcp", s.base)).header("authorization", format!("Bearer {token}")).send().await;
    assert_eq!(get.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let foreign = s
        .http
        .post(format!("{}/mcp", s.base))
        .header("authorization", format!("Bearer {token}"))
        .header("origin", "https://evil.example")
        .json(&ping)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN, "DNS-rebinding defence");
    let same = s
        .http
        .post(format!("{}/mcp", s.base))
        .header("authorization", format!("Bearer {token}"))
        .header("origin", &s.base)
        .header("mcp-protocol-version", "2025-06-18")
        .json(&ping)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::OK);
    let old = s
        .http
        .post(format!("{}/mcp", s.base))
        .header("authorization", format!("Bearer {token}"))
        .header("mcp-protocol-version", "2024-11-05")
        .json(&ping)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_dpop_bound_token_works_with_a_proof_for_this_endpoint() {
    let s = server().await;
    let holder = SigningKey::generate(Alg::ES256).unwrap();
    let token = s.token("notes:read", |c| c["cnf"] = json!({"jkt": holder.kid()}));
    let proof = |htu: &str| {
        let mut jwk = holder.public().jwk().clone();
        jwk.as_object_mut().unwrap().retain(|k, _| !["kid", "alg", "use"].contains(&k.as_str()));
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let claims =
            json!({"jti": random_token(""), "htm": "POST", "htu": htu, "iat": NOW, "ath": access_token_hash(&token)});
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(holder.sign(input.as_bytes()).unwrap()))
    };
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami"}});
    let send = |proof: String| {
        s.http
            .post(format!("{}/mcp", s.base))
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .json(&call)
            .send()
    };
    let reply: Value = send(proof(&format!("{}/mcp", s.base))).await.unwrap().json().await.unwrap();
    assert_eq!(tool_text(&reply)["jkt"], holder.kid());
    let wrong = send(proof(&format!("{}/other", s.base))).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let challenges: Vec<&str> =
        wrong.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap()).collect();
    assert!(challenges.iter().any(|c| c.starts_with("DPoP ") && c.contains("invalid_dpop_proof")), "{challenges:?}");
}
