//! Workload identity federation against the real binary: a test issuer on loopback publishes a
//! JWKS (an RSA key as Kubernetes and GitHub use, and a P-256 key); Kubernetes- and
//! GitHub-Actions-shaped tokens are exchanged with the jwt-bearer grant; every refusal is a 400
//! `invalid_grant` with an audit event; the SSRF rules hold without insecure mode; the kill
//! switch ends federated tokens; Mandate's own JWT-SVIDs from its Workload API are accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use axum::http::header;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey};
use serde_json::{Value, json};

use crate::harness::{RESOURCE, Server, claims, now, random_id};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const INSECURE: (&str, &str) = ("MANDATE_ALLOW_INSECURE_FEDERATION", "true");
const RSA_KID: &str = "rsa-1";
const K8S_SUB: &str = "system:serviceaccount:prod:billing";
const K8S_AUD: &str = "https://mandate.example.test";
const GHA_AUD: &str = "https://github.com/acme";

/// An OIDC-style issuer on loopback: `/jwks` (counted) with one RSA-2048 and one P-256 key.
struct TestIssuer {
    base: String,
    rsa: RsaKeyPair,
    ec: SigningKey,
    hits: Arc<AtomicUsize>,
}

impl TestIssuer {
    async fn start() -> Self {
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let ec = SigningKey::generate(Alg::ES256).unwrap();
        let parts = PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
        let rsa_jwk = json!({"kty": "RSA", "kid": RSA_KID, "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&parts.n), "e": URL_SAFE_NO_PAD.encode(&parts.e)});
        let body = json!({"keys": [rsa_jwk, ec.public().jwk()]}).to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app =
            axum::Router::new().route(
                "/jwks",
                get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = body.clone();
                    async move {
                        ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "max-age=300")], body)
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, rsa, ec, hits }
    }

    fn jwks_url(&self) -> String {
        format!("{}/jwks", self.base)
    }

    /// The GitHub-like issuer lives under the same host (its keys are the same JWKS).
    fn gha_issuer(&self) -> String {
        format!("{}/gha", self.base)
    }

    fn rs256(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let mut sig = vec![0u8; self.rsa.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.rsa.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Kubernetes projected tokens: RS256, header without `typ`.
    fn k8s_token(&self, claims: &Value) -> String {
        self.rs256(&json!({"alg": "RS256", "kid": RSA_KID}), claims)
    }

    fn es256(&self, claims: &Value) -> String {
        sign_jwt(&self.ec, "JWT", claims).unwrap()
    }

    fn k8s_claims(&self) -> Value {
        let now = now();
        json!({
            "iss": self.base, "sub": K8S_SUB, "aud": [K8S_AUD],
            "exp": now + 600, "iat": now, "nbf": now, "jti": random_id(),
            "kubernetes.io": {
                "namespace": "prod",
                "serviceaccount": {"name": "billing", "uid": "0e6c9f5a-1b2c-4d3e-8f90-a1b2c3d4e5f6"},
                "pod": {"name": "billing-7d9f8c6b5-x2x4q", "uid": "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"},
            },
        })
    }

    fn gha_claims(&self) -> Value {
        let now = now();
        json!({
            "iss": self.gha_issuer(), "sub": "repo:acme/app:ref:refs/heads/main", "aud": GHA_AUD,
            "exp": now + 300, "iat": now, "nbf": now - 5, "jti": random_id(),
            "repository": "acme/app", "repository_owner": "acme", "ref": "refs/heads/main", "ref_type": "branch",
            "workflow": "deploy", "job_workflow_ref": "acme/app/.github/workflows/deploy.yml@refs/heads/main",
            "environment": "production", "actor": "octocat", "run_id": "1234567890", "event_name": "push",
        })
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A registry with owner alice, resource RESOURCE (read write), agents billing (read) and
/// deployer (read write), and rules `k8s` and `gha` for the test issuer (CLI in insecure mode).
fn register(server: &Server, issuer: &TestIssuer) {
    let cli = |args: &[&str]| server.cli_env(&[INSECURE], args);
    cli(&["owner", "create", "alice"]);
    cli(&["resource", "create", RESOURCE, "--scope", "read", "--scope", "write"]);
    cli(&["agent", "create", "billing", "--owner", "alice", "--scope", "read"]);
    cli(&["agent", "create", "deployer", "--owner", "alice", "--scope", "read", "--scope", "write"]);
    let jwks = issuer.jwks_url();
    cli(&[
        "trust",
        "add-federation",
        "k8s",
        "--issuer",
        &issuer.base,
        "--jwks-url",
        &jwks,
        "--audience",
        K8S_AUD,
        "--subject",
        K8S_SUB,
        "--claim",
        "/kubernetes.io/namespace=prod",
        "--agent",
        "billing",
    ]);
    let gha = issuer.gha_issuer();
    cli(&[
        "trust",
        "add-federation",
        "gha",
        "--issuer",
        &gha,
        "--jwks-url",
        &jwks,
        "--audience",
        GHA_AUD,
        "--subject-prefix",
        "repo:acme/app:",
        "--claim",
        "repository=acme/app",
        "--claim",
        "ref=refs/heads/main",
        "--claim",
        "environment=production",
        "--agent",
        "deployer",
        "--max-ttl-secs",
        "120",
    ]);
}

async fn exchange(server: &Server, assertion: &str, request_id: &str) -> (u16, Value) {
    let response = server
        .http
        .post(server.url("/oauth2/token"))
        .header("x-request-id", request_id)
        .form(&[("grant_type", JWT_BEARER), ("assertion", assertion), ("resource", RESOURCE)])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_and_github_tokens_become_agent_tokens() {
    let issuer = TestIssuer::start().await;
    let server = Server::start_in(tempfile::tempdir().unwrap(), &[INSECURE]);
    register(&server, &issuer);
    let listed = server.cli_json(&["trust", "list"]);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gha", "k8s"]);
    assert_eq!(listed[1]["claims"], json!({"/kubernetes.io/namespace": "prod"}));

    let metadata: Value = server
        .http
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metadata["grant_types_supported"].as_array().unwrap().contains(&json!(JWT_BEARER)));

    // Kubernetes (RS256): the billing agent's token, read only (the agent's scopes).
    let (status, body) = exchange(&server, &issuer.k8s_token(&issuer.k8s_claims()), "k8s-ok").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read");
    assert_eq!(body["expires_in"], 300);
    let k8s_token = body["access_token"].as_str().unwrap().to_owned();
    let seen = server.introspect(&k8s_token).await;
    assert_eq!(seen["active"], true);
    assert_eq!(seen["sub"], "spiffe://mandate.local/agent/billing");
    assert_eq!(seen["aud"], RESOURCE);
    assert_eq!(seen["scope"], "read");
    assert_eq!(seen["client_id"], "federation:k8s");
    assert_eq!(seen["mandate_owner"], "alice");
    assert_eq!(seen["mandate_federated"], json!({"iss": issuer.base, "sub": K8S_SUB, "rule": "k8s"}));

    // GitHub Actions (ES256 here): the deployer agent, capped at the rule's 120 s.
    let (status, body) = exchange(&server, &issuer.es256(&issuer.gha_claims()), "gha-ok").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read write");
    assert_eq!(body["expires_in"], 120);
    let gha = claims(body["access_token"].as_str().unwrap());
    assert_eq!(gha["sub"], "spiffe://mandate.local/agent/deployer");
    assert_eq!(gha["exp"].as_i64().unwrap() - gha["iat"].as_i64().unwrap(), 120);
    assert_eq!(gha["mandate_federated"]["sub"], "repo:acme/app:ref:refs/heads/main");
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 1, "one JWKS fetch, then the cache");

    let events = server.audit_events();
    let issued = events.iter().find(|e| e["correlation_id"] == "k8s-ok").unwrap();
    assert_eq!(issued["action"], "token.issue");
    assert_eq!(issued["decision"], "allow");
    assert_eq!(issued["subject"], format!("{}#{K8S_SUB}", issuer.base));
    assert_eq!(issued["client"], "federation:k8s");
    assert_eq!(issued["agent"], "spiffe://mandate.local/agent/billing");
    assert_eq!(issued["owner"], "alice");
    assert!(events.iter().any(|e| e["action"] == "trust.federation.create" && e["client"] == "federation:gha"));

    // The kill switch for the agent ends its federated tokens; the other agent's stays live.
    server.cli(&["revoke", "--agent", "billing"]);
    assert_eq!(server.introspect(&k8s_token).await, json!({"active": false}));
    assert_eq!(server.introspect(body["access_token"].as_str().unwrap()).await["active"], true);

    // Removing a rule stops further exchanges under it.
    server.cli(&["trust", "remove", "gha"]);
    let (status, body) = exchange(&server, &issuer.es256(&issuer.gha_claims()), "gha-gone").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(server.cli_json(&["trust", "list"]).as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_invalid_grant_and_audited() {
    let issuer = TestIssuer::start().await;
    let server = Server::start_in(tempfile::tempdir().unwrap(), &[INSECURE]);
    register(&server, &issuer);
    let now = now();
    let k8s = |edit: &dyn Fn(&mut Value)| {
        let mut c = issuer.k8s_claims();
        edit(&mut c);
        c
    };
    // The accepted token first (it also fills the JWKS cache), then its replay.
    let replayed = issuer.k8s_token(&issuer.k8s_claims());
    assert_eq!(exchange(&server, &replayed, "first-use").await.0, 200);
    let ec_with_rsa_kid = {
        let header = json!({"alg": "ES256", "kid": RSA_KID, "typ": "JWT"});
        let input = format!("{}.{}", b64(&header), b64(&issuer.k8s_claims()));
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(issuer.ec.sign(input.as_bytes()).unwrap()))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong-issuer",
            issuer.k8s_token(&k8s(&|c| c["iss"] = json!(format!("{}/x", issuer.base)))),
            "no federation rule",
        ),
        ("wrong-audience", issuer.k8s_token(&k8s(&|c| c["aud"] = json!(["https://elsewhere"]))), "audience"),
        ("wrong-subject", issuer.k8s_token(&k8s(&|c| c["sub"] = json!("system:serviceaccount:prod:other"))), "\"sub\""),
        (
            "expired",
            issuer.k8s_token(&k8s(&|c| {
                (c["exp"], c["iat"], c["nbf"]) = (json!(now - 120), json!(now - 3600), json!(now - 3600));
            })),
            "expired",
        ),
        ("alg-mismatch", ec_with_rsa_kid, "algorithm"),
        ("unknown-kid", issuer.rs256(&json!({"alg": "RS256", "kid": "rotated-away"}), &issuer.k8s_claims()), "unknown"),
        ("claim-unmet", issuer.k8s_token(&k8s(&|c| c["kubernetes.io"]["namespace"] = json!("dev"))), "claim"),
        ("replayed", replayed, "already used"),
        ("unsigned", format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&issuer.k8s_claims())), "malformed"),
        (
            "hmac",
            format!("{}.{}.c2ln", b64(&json!({"alg": "HS256", "kid": RSA_KID})), b64(&issuer.k8s_claims())),
            "not accepted",
        ),
        ("garbage", "not-a-jwt".into(), "not a JWT"),
    ];
    for (id, assertion, expected) in &cases {
        let (status, body) = exchange(&server, assertion, id).await;
        assert_eq!(status, 400, "{id}: {body}");
        assert_eq!(body["error"], "invalid_grant", "{id}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(expected), "{id}: {expected:?} not in {description:?}");
        assert!(!description.contains(&issuer.k8s_token(&issuer.k8s_claims())[..20]), "{id} echoes a token");
    }
    // The unknown kid did not make Mandate refetch: the set was fetched under 30 s ago.
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 1, "no refetch within 30 s of the last one");

    // Client authentication is optional, but presented credentials must be valid and must
    // belong to the rule's agent.
    let form = |assertion: String| {
        vec![("grant_type", JWT_BEARER.to_owned()), ("assertion", assertion), ("resource", RESOURCE.to_owned())]
    };
    let other = server.cli_json(&["client", "create", "--agent", "deployer"]);
    let own = server.cli_json(&["client", "create", "--agent", "billing"]);
    let with = |c: &Value, secret: &str, id: &str| {
        server
            .http
            .post(server.url("/oauth2/token"))
            .header("x-request-id", id)
            .basic_auth(c["client_id"].as_str().unwrap(), Some(secret))
            .form(&form(issuer.k8s_token(&issuer.k8s_claims())))
            .send()
    };
    let bad = with(&own, "wrong", "bad-secret").await.unwrap();
    assert_eq!(bad.status(), 401);
    let wrong_agent = with(&other, other["client_secret"].as_str().unwrap(), "wrong-agent").await.unwrap();
    assert_eq!(wrong_agent.status(), 400);
    assert!(wrong_agent.text().await.unwrap().contains("another agent"));
    let ok = with(&own, own["client_secret"].as_str().unwrap(), "own-client").await.unwrap();
    assert_eq!(ok.status(), 200);

    let events = server.audit_events();
    for (id, _, _) in &cases {
        let event = events.iter().find(|e| e["correlation_id"] == *id).unwrap_or_else(|| panic!("{id} not audited"));
        assert_eq!(event["action"], "token.issue", "{id}");
        assert_eq!(event["decision"], "deny", "{id}");
        // A replay is refused by the store's one-time guard, in the same commit as the issuance.
        let reason = if *id == "replayed" { "conflict" } else { "invalid_grant" };
        assert_eq!(event["reason"], reason, "{id}: {event}");
    }
    let wrong_agent = events.iter().find(|e| e["correlation_id"] == "wrong-agent").unwrap();
    assert_eq!(
        (wrong_agent["decision"].as_str(), wrong_agent["reason"].as_str()),
        (Some("deny"), Some("invalid_grant"))
    );
    let own = events.iter().find(|e| e["correlation_id"] == "own-client").unwrap();
    assert!(own["detail"].as_str().unwrap().contains("client="), "{own}");
    let text = serde_json::to_string(&events).unwrap();
    for (_, assertion, _) in &cases {
        assert!(assertion.len() < 20 || !text.contains(assertion.as_str()), "an assertion reached the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_insecure_mode_internal_jwks_urls_are_refused() {
    let issuer = TestIssuer::start().await;
    let server = Server::start();
    server.cli(&["owner", "create", "alice"]);
    server.cli(&["resource", "create", RESOURCE, "--scope", "read"]);
    server.cli(&["agent", "create", "billing", "--owner", "alice", "--scope", "read"]);
    let port = issuer.base.rsplit(':').next().unwrap();
    let rule = |name: &str, issuer_url: &str, jwks: &str| {
        server.cli_raw(&[
            "trust",
            "add-federation",
            name,
            "--issuer",
            issuer_url,
            "--jwks-url",
            jwks,
            "--audience",
            K8S_AUD,
            "--subject",
            K8S_SUB,
            "--agent",
            "billing",
        ])
    };
    // Refused when the rule is created: what the URL itself shows.
    let refused = [
        ("literal", "https://cluster.example".to_owned(), format!("https://127.0.0.1:{port}/jwks"), "loopback"),
        ("metadata", "https://cluster.example".to_owned(), "https://169.254.169.254/jwks".to_owned(), "link-local"),
        ("plain", "https://cluster.example".to_owned(), format!("http://localhost:{port}/jwks"), "https"),
        ("http-issuer", issuer.base.clone(), "https://cluster.example/jwks".to_owned(), "https"),
    ];
    for (name, iss, jwks, expected) in &refused {
        let out = rule(name, iss, jwks);
        assert!(!out.status.success(), "{name} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{name}: {expected:?} not in {stderr}");
    }
    // A host name is only known after resolution: accepted as a rule, refused at the exchange.
    let out = rule("by-name", "https://cluster.example", &format!("https://localhost:{port}/jwks"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = issuer.k8s_claims();
    c["iss"] = json!("https://cluster.example");
    let (status, body) = exchange(&server, &issuer.k8s_token(&c), "ssrf").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("loopback") && description.contains("not fetched"), "{description}");
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 0, "Mandate never connected to the internal address");

    let events = server.audit_events();
    let creations: Vec<&Value> = events.iter().filter(|e| e["action"] == "trust.federation.create").collect();
    let decisions: Vec<&str> = creations.iter().map(|e| e["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["deny", "deny", "deny", "deny", "allow"]);
    let ssrf = events.iter().find(|e| e["correlation_id"] == "ssrf").unwrap();
    assert_eq!((ssrf["decision"].as_str(), ssrf["reason"].as_str()), (Some("deny"), Some("invalid_grant")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandates_own_jwt_svids_are_exchanged_with_its_keys() {
    use std::os::unix::fs::MetadataExt;

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/workload.sock");
    let server = Server::start_in(dir, &[("MANDATE_WORKLOAD_SOCKET", socket.to_str().unwrap())]);
    let probe = server.dir.path().join("uid-probe");
    std::fs::write(&probe, b"").unwrap();
    let uid = std::fs::metadata(&probe).unwrap().uid();
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    server.cli(&["owner", "create", "alice"]);
    server.cli(&["resource", "create", RESOURCE, "--scope", "read"]);
    let (uid_selector, path_selector) = (format!("unix:uid:{uid}"), format!("unix:path:{}", exe.display()));
    server.cli(&[
        "agent",
        "create",
        "worker",
        "--owner",
        "alice",
        "--selector",
        &uid_selector,
        "--selector",
        &path_selector,
    ]);
    server.cli(&["agent", "create", "billing", "--owner", "alice", "--scope", "read"]);
    // The CLI must know the server's issuer to recognise the rule as one for its own SVIDs.
    let own_issuer = format!("{}/spiffe", server.base);
    server.cli_env(
        &[("MANDATE_ISSUER", server.base.as_str())],
        &[
            "trust",
            "add-federation",
            "own",
            "--issuer",
            &own_issuer,
            "--audience",
            "mandate-federation",
            "--subject",
            "spiffe://mandate.local/agent/worker",
            "--agent",
            "billing",
        ],
    );
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display())).await.unwrap();
    let svid = client.fetch_jwt_svid(["mandate-federation"], None).await.unwrap();
    let (status, body) = exchange(&server, svid.token(), "own-svid").await;
    assert_eq!(status, 200, "{body}");
    let token = claims(body["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], "spiffe://mandate.local/agent/billing");
    assert_eq!(token["mandate_federated"]["iss"], own_issuer);
    assert_eq!(token["mandate_federated"]["sub"], "spiffe://mandate.local/agent/worker");
    // A JWT-SVID for another audience is not accepted.
    let other = client.fetch_jwt_svid(["https://elsewhere.example"], None).await.unwrap();
    let (status, body) = exchange(&server, other.token(), "own-svid-aud").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_federation_rules() {
    let issuer = TestIssuer::start().await;
    let server = Server::start();
    server.cli(&["owner", "create", "alice"]);
    server.cli(&["resource", "create", RESOURCE, "--scope", "read"]);
    server.cli(&["agent", "create", "billing", "--owner", "alice", "--scope", "read"]);
    let api = |method: reqwest::Method, path: &str| {
        server.http.request(method, server.url(&format!("/admin/api/v1{path}"))).bearer_auth(&server.admin)
    };
    let jwks = json!({"keys": [issuer.ec.public().jwk()]});
    let rule = json!({
        "name": "inline", "issuer": "https://cluster.example", "jwks": jwks, "audience": K8S_AUD,
        "subject": "system:serviceaccount:prod:", "subject_match": "prefix",
        "claims": {"/kubernetes.io/namespace": "prod"}, "agent": "billing", "max_ttl_secs": 60,
    });
    let created = api(reqwest::Method::POST, "/federation-rules").json(&rule).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["subject_match"], "prefix");
    assert_eq!(created["max_ttl_secs"], 60);

    // Inline keys: no fetching at all, and the secure server accepts the exchange.
    let mut claims = issuer.k8s_claims();
    claims["iss"] = json!("https://cluster.example");
    let (status, body) = exchange(&server, &issuer.es256(&claims), "inline").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 60);
    assert_eq!(issuer.hits.load(Ordering::SeqCst), 0);

    let listed: Value = api(reqwest::Method::GET, "/federation-rules").send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let one: Value = api(reqwest::Method::GET, "/federation-rules/inline").send().await.unwrap().json().await.unwrap();
    assert_eq!(one["issuer"], "https://cluster.example");
    assert_eq!(api(reqwest::Method::GET, "/federation-rules/nope").send().await.unwrap().status(), 404);

    let duplicate = api(reqwest::Method::POST, "/federation-rules").json(&rule).send().await.unwrap();
    assert_eq!(duplicate.status(), 409);
    let mut bad = rule.clone();
    bad["name"] = json!("bad");
    bad["jwks_url"] = json!("https://cluster.example/jwks");
    let both = api(reqwest::Method::POST, "/federation-rules").json(&bad).send().await.unwrap();
    assert_eq!(both.status(), 400);
    assert!(both.text().await.unwrap().contains("exactly one"));
    let unauthenticated = server.http.get(server.url("/admin/api/v1/federation-rules")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);

    assert_eq!(api(reqwest::Method::DELETE, "/federation-rules/inline").send().await.unwrap().status(), 204);
    assert_eq!(api(reqwest::Method::DELETE, "/federation-rules/inline").send().await.unwrap().status(), 404);
    let events = server.audit_events();
    let actions: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("trust.federation."))
        .map(|e| (e["action"].as_str().unwrap(), e["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("trust.federation.create", "allow"),
            ("trust.federation.create", "deny"),
            ("trust.federation.create", "deny"),
            ("trust.federation.delete", "allow"),
            ("trust.federation.delete", "deny"),
        ]
    );
}
