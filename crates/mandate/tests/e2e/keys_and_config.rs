//! Key rotation, keys at rest, and configuration errors.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::harness::{Server, header, serve_command};

async fn jwks_kids(server: &Server) -> Vec<String> {
    let jwks: Value = server.http.get(server.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn rotation_publishes_before_signing_and_keeps_old_tokens_valid() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let old_token = server.token(&id, &secret).await;
    let old_kid = header(&old_token)["kid"].as_str().unwrap().to_owned();

    // Scheduled an hour ahead: published now, not yet signing.
    let scheduled = server.cli_json(&["keys", "rotate", "--alg", "EdDSA", "--activate-in", "3600"]);
    let scheduled_kid = scheduled["kid"].as_str().unwrap().to_owned();
    let mut published = false;
    for _ in 0..40 {
        if jwks_kids(&server).await.contains(&scheduled_kid) {
            published = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(published, "the server picks up a key rotated by another process");
    assert_eq!(header(&server.token(&id, &secret).await)["kid"], old_kid.as_str());

    // Over the admin API, effective at once: new tokens use the new key, old ones stay valid.
    let response: Value = server
        .http
        .post(server.url("/admin/api/v1/keys/rotate"))
        .bearer_auth(&server.admin)
        .json(&serde_json::json!({"alg": "EdDSA", "activate_in_secs": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_kid = response["kid"].as_str().unwrap();
    let new_token = server.token(&id, &secret).await;
    assert_eq!(header(&new_token)["kid"], new_kid);
    let kids = jwks_kids(&server).await;
    assert!(kids.contains(&old_kid) && kids.contains(&new_kid.to_owned()), "{kids:?}");
    assert_eq!(server.introspect(&old_token).await["active"], true);
    assert_eq!(server.introspect(&new_token).await["active"], true);
    assert!(server.audit_events().iter().any(|e| e["action"] == "key.retire"));
}

#[tokio::test]
async fn keys_are_encrypted_at_rest_and_need_the_right_kek() {
    let server = Server::start();
    let dir = server.stop();
    let data = dir.path().join("data");
    let kek_mode = std::fs::metadata(data.join("kek")).unwrap().permissions().mode() & 0o777;
    assert_eq!(kek_mode, 0o600);
    let admin_mode = std::fs::metadata(data.join("admin-token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(admin_mode, 0o600);
    // The database holds no PKCS#8 private key in clear (Ed25519 PKCS#8 starts 30 2e/30 51 02 01).
    let db = std::fs::read(data.join("mandate.db")).unwrap();
    let kek = std::fs::read_to_string(data.join("kek")).unwrap();
    assert!(!db.windows(kek.trim().len()).any(|w| w == kek.trim().as_bytes()), "the KEK is not in the database");

    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = serve_command(dir.path(), &[("MANDATE_KEK", wrong)]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key-encryption key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::set_permissions(data.join("kek"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve_command(dir.path(), &[]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[tokio::test]
async fn unknown_configuration_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mandate.toml");
    std::fs::write(&config, "listne = \"127.0.0.1:1\"\n").unwrap();
    let out = serve_command(dir.path(), &[("MANDATE_CONFIG", config.to_str().unwrap())]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listne"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = serve_command(dir.path(), &[("MANDATE_LISTNE", "x")]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MANDATE_"));

    std::fs::write(&config, "access_token_ttl_secs = 86400\n").unwrap();
    let out = serve_command(dir.path(), &[("MANDATE_CONFIG", config.to_str().unwrap())]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("access_token_ttl_secs"));
}

#[tokio::test]
async fn ttl_and_algorithm_come_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mandate.toml");
    std::fs::write(
        &config,
        "access_token_ttl_secs = 120\naccess_token_alg = \"ES256\"\ntrust_domain = \"corp.example\"\n",
    )
    .unwrap();
    let server = Server::start_in(dir, &[("MANDATE_CONFIG", config.to_str().unwrap())]);
    let env = [("MANDATE_CONFIG", config.to_str().unwrap())];
    let with_config = |args: &[&str]| server.cli_env(&env, args);
    with_config(&["owner", "create", "alice"]);
    with_config(&["resource", "create", crate::harness::RESOURCE, "--scope", "read"]);
    with_config(&["agent", "create", "bot", "--owner", "alice", "--scope", "read"]);
    let client: Value = serde_json::from_str(&with_config(&["--json", "client", "create", "--agent", "bot"])).unwrap();
    let token = server.token(client["client_id"].as_str().unwrap(), client["client_secret"].as_str().unwrap()).await;
    assert_eq!(header(&token)["alg"], "ES256");
    let claims = crate::harness::claims(&token);
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 120);
    assert_eq!(claims["sub"], "spiffe://corp.example/agent/bot");
    assert_eq!(server.introspect(&token).await["active"], true);
}
