//! Introspection (RFC 7662), revocation (RFC 7009) and the kill switch.

use serde_json::Value;

use crate::harness::{RESOURCE, Server, claims};

async fn post(server: &Server, path: &str, auth: Auth<'_>, fields: &[(&str, &str)]) -> (u16, Value) {
    let request = server.http.post(server.url(path)).form(fields);
    let request = match auth {
        Auth::Admin => request.bearer_auth(&server.admin),
        Auth::Client(id, secret) => request.basic_auth(id, Some(secret)),
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Admin,
    Client(&'a str, &'a str),
    Bearer(&'a str),
    None,
}

#[tokio::test]
async fn introspection_shows_live_tokens_only_to_those_allowed() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let (other_id, other_secret) = server.agent_with_client("other", "client_secret_basic");
    server.cli(&["agent", "create", "rs", "--owner", "alice"]);
    let rs = server.cli_json(&["client", "create", "--agent", "rs", "--introspect"]);
    let (rs_id, rs_secret) = (rs["client_id"].as_str().unwrap(), rs["client_secret"].as_str().unwrap());
    let token = server.token(&id, &secret).await;

    let (status, admin_view) = post(&server, "/oauth2/introspect", Auth::Admin, &[("token", &token)]).await;
    assert_eq!(status, 200);
    assert_eq!(admin_view["active"], true);
    assert_eq!(admin_view["client_id"], id.as_str());
    assert_eq!(admin_view["aud"], RESOURCE);
    assert_eq!(admin_view["mandate_owner"], "alice");
    assert_eq!(admin_view["token_type"], "Bearer");

    let (_, own) = post(&server, "/oauth2/introspect", Auth::Client(&id, &secret), &[("token", &token)]).await;
    assert_eq!(own["active"], true);
    let (_, rs_view) = post(&server, "/oauth2/introspect", Auth::Client(rs_id, rs_secret), &[("token", &token)]).await;
    assert_eq!(rs_view["active"], true);
    let (_, foreign) =
        post(&server, "/oauth2/introspect", Auth::Client(&other_id, &other_secret), &[("token", &token)]).await;
    assert_eq!(foreign, serde_json::json!({"active": false}));

    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for garbage in [tampered.as_str(), "not-a-token", "a.b.c"] {
        let (status, body) = post(&server, "/oauth2/introspect", Auth::Admin, &[("token", garbage)]).await;
        assert_eq!((status, body), (200, serde_json::json!({"active": false})));
    }

    let (status, body) = post(&server, "/oauth2/introspect", Auth::None, &[("token", &token)]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));
    let (status, body) = post(&server, "/oauth2/introspect", Auth::Bearer(&token), &[("token", &token)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "an access token is not an admin credential"
    );
    let (status, body) = post(&server, "/oauth2/introspect", Auth::Admin, &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));

    let events = server.audit_events();
    let introspections: Vec<&Value> = events.iter().filter(|e| e["action"] == "token.introspect").collect();
    assert_eq!(introspections.len(), 10);
    assert!(introspections.iter().any(|e| e["decision"] == "allow" && e["jti"] == claims(&token)["jti"]));
}

#[tokio::test]
async fn revocation_kills_own_tokens_and_ignores_others() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let (other_id, other_secret) = server.agent_with_client("other", "client_secret_basic");
    let mine = server.token(&id, &secret).await;
    let kept = server.token(&id, &secret).await;

    // Another client cannot revoke it: 200 (RFC 7009), but the token stays live.
    let (status, _) =
        post(&server, "/oauth2/revoke", Auth::Client(&other_id, &other_secret), &[("token", &mine)]).await;
    assert_eq!(status, 200);
    assert_eq!(server.introspect(&mine).await["active"], true);

    let (status, _) = post(
        &server,
        "/oauth2/revoke",
        Auth::Client(&id, &secret),
        &[("token", &mine), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(server.introspect(&mine).await["active"], false);
    assert_eq!(server.introspect(&kept).await["active"], true, "only that token");

    let (status, _) = post(&server, "/oauth2/revoke", Auth::Client(&id, &secret), &[("token", "garbage")]).await;
    assert_eq!(status, 200, "unknown tokens are not an error");
    let (status, _) = post(&server, "/oauth2/revoke", Auth::Admin, &[("token", &kept)]).await;
    assert_eq!(status, 200);
    assert_eq!(server.introspect(&kept).await["active"], false);
    let (status, body) = post(&server, "/oauth2/revoke", Auth::Client(&id, "wrong"), &[("token", &kept)]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")));

    let events = server.audit_events();
    let revokes: Vec<&Value> = events.iter().filter(|e| e["action"] == "token.revoke").collect();
    assert_eq!(revokes.iter().filter(|e| e["decision"] == "allow").count(), 2);
    assert_eq!(revokes.iter().filter(|e| e["decision"] == "deny").count(), 3);
}

#[tokio::test]
async fn kill_switch_revokes_everything_an_agent_owner_or_client_holds() {
    let server = Server::start();
    let (a_id, a_secret) = server.agent_with_client("agent-a", "client_secret_basic");
    let (b_id, b_secret) = server.agent_with_client("agent-b", "client_secret_basic");
    server.cli(&["owner", "create", "bob"]);
    server.cli(&["agent", "create", "agent-c", "--owner", "bob", "--scope", "read"]);
    let c = server.cli_json(&["client", "create", "--agent", "agent-c"]);
    let (c_id, c_secret) = (c["client_id"].as_str().unwrap(), c["client_secret"].as_str().unwrap());

    let a = server.token(&a_id, &a_secret).await;
    let b = server.token(&b_id, &b_secret).await;
    let c_token = server.token(c_id, c_secret).await;

    let out = server.cli_json(&["revoke", "--agent", "agent-a"]);
    assert_eq!(out["agent"], "agent-a");
    assert_eq!(server.introspect(&a).await["active"], false);
    assert_eq!(server.introspect(&b).await["active"], true);

    server.cli(&["revoke", "--owner", "alice"]);
    assert_eq!(server.introspect(&b).await["active"], false, "owner revocation reaches all of alice's agents");
    assert_eq!(server.introspect(&c_token).await["active"], true, "bob's agent is untouched");

    server.cli(&["revoke", "--client", c_id]);
    assert_eq!(server.introspect(&c_token).await["active"], false);

    let unknown = server.cli_raw(&["revoke", "--agent", "ghost"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("ghost"));

    // Epochs are whole seconds: a token issued in a later second is live again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let fresh = server.token(&a_id, &a_secret).await;
    assert_eq!(server.introspect(&fresh).await["active"], true);

    let events = server.audit_events();
    for action in ["revoke.agent", "revoke.owner", "revoke.client"] {
        assert!(events.iter().any(|e| e["action"] == action && e["decision"] == "allow"), "{action}");
    }
    assert!(events.iter().any(|e| e["action"] == "revoke.agent" && e["decision"] == "deny"));
}
