//! `/oauth2/token`: the client_credentials grant and every way to get it wrong. Each refusal
//! must carry the RFC 6749 code and status, be audited under the request's id, and change nothing.

use serde_json::{Value, json};

use crate::harness::{RESOURCE, Server, claims, header};

#[tokio::test]
async fn client_credentials_issues_an_audience_bound_jwt_access_token() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let response = server
        .http
        .post(server.url("/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("resource", RESOURCE), ("scope", "read")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "read");
    let token = body["access_token"].as_str().unwrap();
    let head = header(token);
    assert_eq!(head["typ"], "at+jwt");
    assert_eq!(head["alg"], "EdDSA");
    let c = claims(token);
    assert_eq!(c["iss"], server.base.as_str());
    assert_eq!(c["aud"], RESOURCE);
    assert_eq!(c["sub"], "spiffe://mandate.local/agent/bot");
    assert_eq!(c["client_id"], id.as_str());
    assert_eq!(c["mandate_owner"], "alice");
    assert_eq!(c["scope"], "read");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    assert_eq!(c["jti"].as_str().unwrap().len(), 22);
    // The JWKS holds the signing key under the token's kid.
    let jwks: Value = server.http.get(server.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert!(jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == head["kid"]));
    // The issuance is in the audit log with its jti, never the token itself.
    let events = server.audit_events();
    let issued = events.iter().find(|e| e["action"] == "token.issue").unwrap();
    assert_eq!(issued["decision"], "allow");
    assert_eq!(issued["jti"], c["jti"]);
    assert_eq!(issued["owner"], "alice");
    assert_eq!(issued["resource"], RESOURCE);
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(token) && !all.contains(&secret));
}

#[tokio::test]
async fn client_secret_post_works_and_requested_scopes_narrow_to_the_agents() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("poster", "client_secret_post");
    let body: Value = server
        .http
        .post(server.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", RESOURCE),
            ("scope", "read write"),
            ("client_id", &id),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The resource offers write, the agent may not have it: the grant is narrowed, not refused.
    assert_eq!(body["scope"], "read", "{body}");
}

/// One malformed request: what to send and what must come back.
struct Case {
    name: &'static str,
    status: u16,
    error: &'static str,
    send: fn(&Server, &str, &str) -> reqwest::RequestBuilder,
}

fn form(server: &Server, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    server.http.post(server.url("/oauth2/token")).form(fields)
}

fn basic(server: &Server, id: &str, secret: &str, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    form(server, fields).basic_auth(id, Some(secret))
}

const GRANT: (&str, &str) = ("grant_type", "client_credentials");
const TARGET: (&str, &str) = ("resource", RESOURCE);

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "json body",
            status: 400,
            error: "invalid_request",
            send: |s, id, sec| {
                s.http
                    .post(s.url("/oauth2/token"))
                    .basic_auth(id, Some(sec))
                    .json(&json!({"grant_type": "client_credentials"}))
            },
        },
        Case {
            name: "no content type",
            status: 400,
            error: "invalid_request",
            send: |s, id, sec| {
                s.http.post(s.url("/oauth2/token")).basic_auth(id, Some(sec)).body("grant_type=client_credentials")
            },
        },
        Case {
            name: "oversized body",
            status: 413,
            error: "invalid_request",
            send: |s, id, sec| {
                let padding = "x".repeat(20 * 1024);
                basic(s, id, sec, &[GRANT, TARGET, ("padding", &padding)])
            },
        },
        Case {
            name: "repeated parameter",
            status: 400,
            error: "invalid_request",
            send: |s, id, sec| basic(s, id, sec, &[GRANT, GRANT, TARGET]),
        },
        Case {
            name: "missing grant_type",
            status: 400,
            error: "invalid_request",
            send: |s, id, sec| basic(s, id, sec, &[TARGET]),
        },
        Case {
            name: "unknown grant_type",
            status: 400,
            error: "unsupported_grant_type",
            send: |s, id, sec| basic(s, id, sec, &[("grant_type", "password"), TARGET]),
        },
        Case {
            name: "no client authentication",
            status: 401,
            error: "invalid_client",
            send: |s, id, _| form(s, &[GRANT, TARGET, ("client_id", id)]),
        },
        Case {
            name: "wrong secret",
            status: 401,
            error: "invalid_client",
            send: |s, id, _| basic(s, id, "mcs_wrong", &[GRANT, TARGET]),
        },
        Case {
            name: "unknown client",
            status: 401,
            error: "invalid_client",
            send: |s, _, sec| basic(s, "nobody", sec, &[GRANT, TARGET]),
        },
        Case {
            name: "malformed basic header",
            status: 401,
            error: "invalid_client",
            send: |s, _, _| form(s, &[GRANT, TARGET]).header("authorization", "Basic !!!notbase64"),
        },
        Case {
            name: "two authentication methods",
            status: 400,
            error: "invalid_request",
            send: |s, id, sec| basic(s, id, sec, &[GRANT, TARGET, ("client_id", id), ("client_secret", sec)]),
        },
        Case {
            name: "post credentials for a basic client",
            status: 401,
            error: "invalid_client",
            send: |s, id, sec| form(s, &[GRANT, TARGET, ("client_id", id), ("client_secret", sec)]),
        },
        Case {
            name: "missing resource",
            status: 400,
            error: "invalid_request",
            send: |s, id, sec| basic(s, id, sec, &[GRANT]),
        },
        Case {
            name: "unknown resource",
            status: 400,
            error: "invalid_target",
            send: |s, id, sec| basic(s, id, sec, &[GRANT, ("resource", "https://elsewhere.example")]),
        },
        Case {
            name: "resource with fragment",
            status: 400,
            error: "invalid_target",
            send: |s, id, sec| basic(s, id, sec, &[GRANT, ("resource", "https://api.example.test#x")]),
        },
        Case {
            name: "two resources",
            status: 400,
            error: "invalid_target",
            send: |s, id, sec| basic(s, id, sec, &[GRANT, TARGET, ("resource", "https://other.example")]),
        },
        Case {
            name: "unknown scope",
            status: 400,
            error: "invalid_scope",
            send: |s, id, sec| basic(s, id, sec, &[GRANT, TARGET, ("scope", "read admin")]),
        },
        Case {
            name: "only scopes the agent lacks",
            status: 400,
            error: "invalid_scope",
            send: |s, id, sec| basic(s, id, sec, &[GRANT, TARGET, ("scope", "write")]),
        },
        Case {
            name: "malformed scope",
            status: 400,
            error: "invalid_scope",
            send: |s, id, sec| basic(s, id, sec, &[GRANT, TARGET, ("scope", "read \"quoted\"")]),
        },
        Case {
            name: "assertion of the wrong type",
            status: 400,
            error: "invalid_request",
            send: |s, _, _| {
                form(s, &[GRANT, TARGET, ("client_assertion", "a.b.c"), ("client_assertion_type", "urn:x")])
            },
        },
        Case {
            name: "garbage assertion",
            status: 401,
            error: "invalid_client",
            send: |s, _, _| {
                form(
                    s,
                    &[
                        GRANT,
                        TARGET,
                        ("client_assertion", "a.b.c"),
                        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ],
                )
            },
        },
    ]
}

#[tokio::test]
async fn bad_requests_get_the_right_error_are_audited_and_change_nothing() {
    let server = Server::start();
    let (id, secret) = server.agent_with_client("bot", "client_secret_basic");
    let before = server.audit_events().len();
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        let request_id = format!("case-{i}");
        let response = (case.send)(&server, &id, &secret).header("x-request-id", &request_id).send().await.unwrap();
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        assert_eq!(response.headers()["x-request-id"], request_id.as_str(), "{}", case.name);
        assert_eq!(response.headers()["cache-control"], "no-store", "{}", case.name);
        if case.status == 401 && case.name == "wrong secret" {
            assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
        }
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], case.error, "{}: {body}", case.name);
        assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{}", case.name);
        assert!(body.get("access_token").is_none());
    }
    let events = server.audit_events();
    // One refusal event per case, nothing else (the export itself writes no events).
    assert_eq!(events.len(), before + cases.len());
    for (i, case) in cases.iter().enumerate() {
        let event = events.iter().find(|e| e["correlation_id"] == format!("case-{i}")).unwrap();
        assert_eq!(event["action"], "token.issue", "{}", case.name);
        assert_eq!(event["decision"], "deny", "{}", case.name);
        assert_eq!(event["reason"], case.error, "{}", case.name);
        assert!(event["jti"].is_null(), "{}", case.name);
    }
    // Nothing changed: the registry is as it was and the client still works.
    assert_eq!(server.cli_json(&["client", "list"]).as_array().unwrap().len(), 1);
    server.token(&id, &secret).await;
}

#[tokio::test]
async fn private_key_jwt_assertions_are_single_use_and_checked() {
    use mandate_crypto::jose::sign_jwt;
    use mandate_crypto::{Alg, SigningKey};

    let server = Server::start();
    server.agent_with_client("seed", "client_secret_basic");
    server.cli(&["agent", "create", "signer", "--owner", "alice", "--scope", "read"]);
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let jwks_path = server.dir.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({"keys": [key.public().jwk()]}).to_string()).unwrap();
    let client = server.cli_json(&[
        "client",
        "create",
        "--agent",
        "signer",
        "--auth",
        "private_key_jwt",
        "--jwks",
        jwks_path.to_str().unwrap(),
        "--id",
        "signer-client",
    ]);
    assert_eq!(client["client_id"], "signer-client");
    assert!(client["client_secret"].is_null());

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let assertion = |jti: &str, exp: i64, aud: &str| {
        let claims =
            json!({"iss": "signer-client", "sub": "signer-client", "aud": aud, "exp": exp, "iat": now, "jti": jti});
        sign_jwt(&key, "client-authentication+jwt", &claims).unwrap()
    };
    let send = |assertion: String, resource: &'static str| {
        form(
            &server,
            &[
                GRANT,
                ("resource", resource),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", &assertion),
            ],
        )
        .send()
    };
    let status_and_error = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (status, body["error"].as_str().unwrap_or("").to_owned())
    };

    // An assertion is spent once presented and valid, whatever the request's outcome...
    let first = assertion("jti-1", now + 120, &server.base);
    let refused = status_and_error(send(first.clone(), "https://elsewhere.example").await.unwrap()).await;
    assert_eq!(refused, (400, "invalid_target".to_owned()));
    // ...so a replay is refused at client authentication, before any grant check could leak
    // whether a resource exists.
    let replayed = status_and_error(send(first, RESOURCE).await.unwrap()).await;
    assert_eq!(replayed, (401, "invalid_client".to_owned()));
    let second = assertion("jti-1b", now + 120, &server.base);
    assert_eq!(send(second.clone(), RESOURCE).await.unwrap().status(), 200);
    let replayed = status_and_error(send(second, "https://elsewhere.example").await.unwrap()).await;
    assert_eq!(replayed, (401, "invalid_client".to_owned()));

    let token_endpoint_aud = assertion("jti-2", now + 120, &server.url("/oauth2/token"));
    assert_eq!(send(token_endpoint_aud, RESOURCE).await.unwrap().status(), 200);
    for (name, bad) in [
        ("expired", assertion("jti-3", now - 120, &server.base)),
        ("wrong audience", assertion("jti-4", now + 120, "https://other-as.example")),
        ("lifetime too long", assertion("jti-5", now + 3600, &server.base)),
    ] {
        let got = status_and_error(send(bad, RESOURCE).await.unwrap()).await;
        assert_eq!(got, (401, "invalid_client".to_owned()), "{name}");
    }
    let stranger = SigningKey::generate(Alg::ES256).unwrap();
    let forged = sign_jwt(
        &stranger,
        "client-authentication+jwt",
        &json!({"iss": "signer-client", "sub": "signer-client", "aud": server.base, "exp": now + 60, "jti": "jti-6"}),
    )
    .unwrap();
    assert_eq!(status_and_error(send(forged, RESOURCE).await.unwrap()).await, (401, "invalid_client".to_owned()));
    let wrong_typ = sign_jwt(
        &key,
        "at+jwt",
        &json!({"iss": "signer-client", "sub": "signer-client", "aud": server.base, "exp": now + 60, "jti": "jti-7"}),
    )
    .unwrap();
    assert_eq!(status_and_error(send(wrong_typ, RESOURCE).await.unwrap()).await, (401, "invalid_client".to_owned()));

    let events = server.audit_events();
    let replay_event = events
        .iter()
        .filter(|e| e["client"] == "signer-client" && e["decision"] == "deny" && e["action"] == "token.issue")
        .count();
    assert_eq!(replay_event, 8, "every refused request is audited");
    let spent = events.iter().filter(|e| e["action"] == "client.authenticate").count();
    assert_eq!(spent, 5, "each valid assertion is spent once, replays refused: {spent}");
}

#[tokio::test]
async fn discovery_documents_describe_this_issuer() {
    let server = Server::start();
    for path in ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"] {
        let doc: Value = server.http.get(server.url(path)).send().await.unwrap().json().await.unwrap();
        assert_eq!(doc["issuer"], server.base.as_str(), "{path}");
        assert_eq!(doc["token_endpoint"], server.url("/oauth2/token"));
        assert_eq!(doc["introspection_endpoint"], server.url("/oauth2/introspect"));
        assert_eq!(doc["revocation_endpoint"], server.url("/oauth2/revoke"));
        assert_eq!(doc["jwks_uri"], server.url("/.well-known/jwks.json"));
        assert_eq!(
            doc["grant_types_supported"],
            json!([
                "client_credentials",
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "urn:ietf:params:oauth:grant-type:token-exchange",
                "authorization_code",
                "refresh_token",
                "urn:openid:params:grant-type:ciba"
            ])
        );
        let methods = doc["token_endpoint_auth_methods_supported"].as_array().unwrap();
        assert!(methods.contains(&json!("private_key_jwt")));
    }
    let response = server.http.get(server.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/jwk-set+json");
    let jwks: Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let kinds: Vec<(&str, &str)> =
        keys.iter().map(|k| (k["kty"].as_str().unwrap(), k["alg"].as_str().unwrap())).collect();
    assert!(kinds.contains(&("OKP", "EdDSA")) && kinds.contains(&("EC", "ES256")));
    for key in keys {
        assert!(key.get("d").is_none(), "no private parts");
        let kid = key["kid"].as_str().unwrap();
        let public = mandate_crypto::PublicKey::from_jwk(key).unwrap();
        let members = match key["kty"].as_str().unwrap() {
            "OKP" => json!({"crv": key["crv"], "kty": "OKP", "x": key["x"]}),
            _ => json!({"crv": key["crv"], "kty": "EC", "x": key["x"], "y": key["y"]}),
        };
        assert_eq!(kid, mandate_crypto::keys::thumbprint(&members));
        assert_eq!(public.kid(), kid);
    }
}
