//! The admin API: bearer-protected registry management, audited like everything else.

use serde_json::{Value, json};

use crate::harness::{RESOURCE, Server};

async fn call(server: &Server, method: reqwest::Method, path: &str, body: Option<Value>, admin: bool) -> (u16, Value) {
    let mut request = server.http.request(method, server.url(&format!("/admin/api/v1{path}")));
    if admin {
        request = request.bearer_auth(&server.admin);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn registry_round_trip_over_the_admin_api() {
    let server = Server::start();
    let post = reqwest::Method::POST;
    let (status, owner) =
        call(&server, post.clone(), "/owners", Some(json!({"name": "alice", "display_name": "Alice"})), true).await;
    assert_eq!((status, owner["name"].as_str()), (201, Some("alice")));
    let (status, _) =
        call(&server, post.clone(), "/resources", Some(json!({"uri": RESOURCE, "scopes": ["read"]})), true).await;
    assert_eq!(status, 201);
    let (status, agent) = call(
        &server,
        post.clone(),
        "/agents",
        Some(json!({"name": "bot", "owner": "alice", "scopes": ["read"]})),
        true,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(agent["spiffe_id"], "spiffe://mandate.local/agent/bot");
    let (status, client) = call(&server, post.clone(), "/clients", Some(json!({"agent": "bot"})), true).await;
    assert_eq!(status, 201);
    assert!(client.get("secret_hash").is_none(), "hashes stay inside");
    let (id, secret) = (client["client_id"].as_str().unwrap(), client["client_secret"].as_str().unwrap());
    let token = server.token(id, secret).await;
    let (_, second) = call(&server, post.clone(), "/clients", Some(json!({"agent": "bot"})), true).await;
    let second_id = second["client_id"].as_str().unwrap();
    let live = server.token(second_id, second["client_secret"].as_str().unwrap()).await;
    assert_eq!(server.introspect(&live).await["active"], true);
    let (status, _) = call(&server, reqwest::Method::DELETE, &format!("/clients/{second_id}"), None, true).await;
    assert_eq!(status, 204);
    assert_eq!(server.introspect(&live).await["active"], false, "a deleted client's tokens die with it");

    let (status, listed) = call(&server, reqwest::Method::GET, "/agents", None, true).await;
    assert_eq!((status, listed.as_array().unwrap().len()), (200, 1));
    let (status, fetched) = call(&server, reqwest::Method::GET, &format!("/clients/{id}"), None, true).await;
    assert_eq!((status, fetched["agent"].as_str()), (200, Some("bot")));
    assert!(fetched.get("client_secret").is_none() && fetched.get("secret_hash").is_none());

    let (status, revoked) = call(&server, post.clone(), "/revocations", Some(json!({"agent": "bot"})), true).await;
    assert_eq!((status, revoked["agent"].as_str()), (200, Some("bot")));
    assert_eq!(server.introspect(&token).await["active"], false);

    let (status, _) = call(&server, reqwest::Method::DELETE, &format!("/clients/{id}"), None, true).await;
    assert_eq!(status, 204);
    let (status, _) = call(&server, reqwest::Method::GET, &format!("/clients/{id}"), None, true).await;
    assert_eq!(status, 404);

    let events = server.audit_events();
    for action in ["registry.owner.create", "registry.agent.create", "registry.client.create", "registry.client.delete"]
    {
        assert!(events.iter().any(|e| e["action"] == action && e["decision"] == "allow"), "{action}");
    }
}

#[tokio::test]
async fn admin_api_refuses_bad_input_and_changes_nothing() {
    let server = Server::start();
    server.agent_with_client("bot", "client_secret_basic");
    let post = reqwest::Method::POST;

    let (status, _) = call(&server, reqwest::Method::GET, "/agents", None, false).await;
    assert_eq!(status, 401);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/owners", json!({"name": "alice"}), 409, "conflict"),
        ("/owners", json!({"name": "Not Valid"}), 400, "invalid_request"),
        ("/agents", json!({"name": "x", "owner": "ghost"}), 404, "not_found"),
        ("/agents", json!({"name": "y", "owner": "alice", "scopes": ["bad\"scope"]}), 400, "invalid_request"),
        ("/clients", json!({"agent": "bot", "token_endpoint_auth_method": "none"}), 400, "invalid_request"),
        ("/clients", json!({"agent": "bot", "token_endpoint_auth_method": "private_key_jwt"}), 400, "invalid_request"),
        (
            "/clients",
            json!({"agent": "bot", "token_endpoint_auth_method": "private_key_jwt",
                   "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
            400,
            "invalid_request",
        ),
        ("/resources", json!({"uri": "not a uri", "scopes": ["read"]}), 400, "invalid_request"),
        ("/resources", json!({"uri": "https://x.example", "scopes": []}), 400, "invalid_request"),
        ("/revocations", json!({"agent": "bot", "owner": "alice"}), 400, "invalid_request"),
    ];
    for (path, body, status, error) in &cases {
        let (got, answer) = call(&server, post.clone(), path, Some(body.clone()), true).await;
        assert_eq!((got, answer["error"].as_str()), (*status, Some(*error)), "{path} {body}");
    }
    let (status, _) = call(&server, post.clone(), "/owners", Some(json!({"name": "z", "extra": 1})), true).await;
    assert_eq!(status, 422, "unknown fields are refused");
    let huge = "x".repeat(100 * 1024);
    let (status, _) =
        call(&server, post.clone(), "/owners", Some(json!({"name": "z", "display_name": huge})), true).await;
    assert_eq!(status, 413, "admin bodies are bounded");
    let (status, answer) = call(&server, reqwest::Method::DELETE, "/owners/alice", None, true).await;
    assert_eq!((status, answer["error"].as_str()), (409, Some("in_use")), "an owner with agents stays");

    assert_eq!(server.cli_json(&["owner", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(server.cli_json(&["agent", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(server.cli_json(&["client", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(server.cli_json(&["resource", "list"]).as_array().unwrap().len(), 1);
    let events = server.audit_events();
    assert!(events.iter().any(|e| e["action"] == "admin.authenticate" && e["decision"] == "deny"));
    let refused_registry = events
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("registry.") && e["decision"] == "deny")
        .count();
    assert_eq!(refused_registry, 9 + 1, "each refused registry change is audited");
}
