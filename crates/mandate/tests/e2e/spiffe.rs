//! SPIFFE over HTTP and the CLI against the real binary: the bundle endpoint, OIDC discovery and
//! JWKS for JWT-SVIDs (checked with mandate-crypto as a relying party would), CLI-issued SVIDs,
//! join-token bootstrap with an rcgen CSR (once, then refused; expired; malformed), an upstream
//! root CA, and the audit events of all of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mandate_crypto::{PublicKey, VerifyOptions, verify_jwt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use serde_json::{Value, json};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::harness::{Server, claims, header};

const AUDIENCE: &str = "https://aud.example.test";

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn pem_certs(text: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(text.as_bytes())
        .map(Result::unwrap)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| if let GeneralName::URI(u) = n { Some((*u).to_owned()) } else { None })
        .collect()
}

fn signed_by(cert: &[u8], issuer: &[u8]) -> bool {
    parse(cert).verify_signature(Some(parse(issuer).public_key())).is_ok()
}

fn register(server: &Server, agent: &str) {
    let _ = server.cli_raw(&["owner", "create", "alice"]);
    server.cli(&["agent", "create", agent, "--owner", "alice"]);
}

async fn get_json(server: &Server, path: &str) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    let response = server.http.get(server.url(path)).send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.json().await.unwrap())
}

async fn join(server: &Server, body: &Value) -> (u16, Value) {
    let response = server.http.post(server.url("/spiffe/v1/join")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["cache-control"], "no-store");
    (status, response.json().await.unwrap())
}

fn csr(key: &KeyPair, asked_uri: &str) -> String {
    let mut params = CertificateParams::new(vec!["ignored.example".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::URI(asked_uri.to_owned().try_into().unwrap()));
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn events(server: &Server, action: &str) -> Vec<Value> {
    server.audit_events().into_iter().filter(|e| e["action"] == action).collect()
}

#[tokio::test]
async fn bundle_endpoint_serves_the_spiffe_bundle() {
    let server = Server::start();
    let (status, headers, doc) = get_json(&server, "/.well-known/spiffe-bundle").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("application/json"));
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(doc["spiffe_sequence"].as_u64().unwrap() >= 1);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    let keys = doc["keys"].as_array().unwrap();
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!((x509.len(), jwt.len(), keys.len()), (1, 1, 2));
    assert!(x509[0].get("kid").is_none());
    let x5c = x509[0]["x5c"].as_array().unwrap();
    assert_eq!(x5c.len(), 1);
    let root = STANDARD.decode(x5c[0].as_str().unwrap()).unwrap();
    let cert = parse(&root);
    assert!(cert.is_ca());
    assert_eq!(uri_sans(&cert), vec!["spiffe://mandate.local".to_owned()]);
    assert!(signed_by(&root, &root));
    assert_eq!((jwt[0]["kty"].as_str(), jwt[0]["crv"].as_str()), (Some("EC"), Some("P-256")));
    assert!(jwt[0]["kid"].is_string());

    // Same content, same sequence number; the root persists across a restart.
    let (_, _, again) = get_json(&server, "/.well-known/spiffe-bundle").await;
    assert_eq!(again, doc);
    let dir = server.stop();
    let server = Server::start_in(dir, &[]);
    let (_, _, after_restart) = get_json(&server, "/.well-known/spiffe-bundle").await;
    assert_eq!(after_restart, doc);
    assert_eq!(events(&server, "spiffe.ca.create").len(), 1);
}

#[tokio::test]
async fn jwt_svids_from_the_cli_verify_against_the_discovered_jwks() {
    let server = Server::start();
    register(&server, "bot");
    let (status, headers, discovery) = get_json(&server, "/spiffe/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    assert_eq!(headers["access-control-allow-origin"], "*");
    let issuer = server.url("/spiffe");
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(discovery["jwks_uri"], server.url("/spiffe/jwks.json").as_str());
    assert_eq!(discovery["id_token_signing_alg_values_supported"], json!(["ES256"]));
    assert_eq!(discovery["subject_types_supported"], json!(["public"]));
    assert_eq!(discovery["response_types_supported"], json!(["id_token"]));

    let (_, _, jwks) = get_json(&server, "/spiffe/jwks.json").await;
    let keys: Vec<PublicKey> =
        jwks["keys"].as_array().unwrap().iter().map(|k| PublicKey::from_jwk(k).unwrap()).collect();
    assert!(!keys.is_empty());
    // Only JWT-SVID keys: none of the access-token keys.
    let (_, _, token_jwks) = get_json(&server, "/.well-known/jwks.json").await;
    let token_kids: Vec<&str> =
        token_jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(keys.iter().all(|k| !token_kids.contains(&k.kid())));

    let out = server.cli_json(&["agent", "svid", "bot", "--jwt", "--audience", AUDIENCE]);
    let token = out["token"].as_str().unwrap();
    assert_eq!(out["spiffe_id"], "spiffe://mandate.local/agent/bot");
    assert_eq!(header(token)["typ"], "JWT");
    assert_eq!(header(token)["alg"], "ES256");
    let opts = VerifyOptions {
        typ: &["JWT"],
        typ_optional: false,
        issuer: Some(&issuer),
        audience: &[AUDIENCE],
        now: now_secs(),
        leeway_secs: 5,
    };
    let verified = verify_jwt(token, &keys, &opts).unwrap();
    assert_eq!(verified["sub"], "spiffe://mandate.local/agent/bot");
    let lifetime = verified["exp"].as_i64().unwrap() - verified["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 300);
    // A relying party with another audience refuses it; so does one holding the access-token keys.
    let wrong_aud = VerifyOptions { audience: &["https://other.example"], ..opts.clone() };
    assert!(verify_jwt(token, &keys, &wrong_aud).is_err());
    let token_keys: Vec<PublicKey> =
        token_jwks["keys"].as_array().unwrap().iter().map(|k| PublicKey::from_jwk(k).unwrap()).collect();
    assert!(verify_jwt(token, &token_keys, &opts).is_err());

    // No audience: refused, and the refusal is audited.
    let refused = server.cli_raw(&["agent", "svid", "bot", "--jwt"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("audience"));
    let issued = events(&server, "svid.jwt.issue");
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[0]["decision"], "allow");
    assert_eq!(issued[0]["jti"], claims(token)["jti"]);
    assert_eq!(issued[0]["agent"], "spiffe://mandate.local/agent/bot");
    assert_eq!(issued[0]["owner"], "alice");
    assert_eq!(issued[0]["resource"], AUDIENCE);
    assert_eq!(issued[1]["decision"], "deny");
}

#[tokio::test]
async fn x509_svids_from_the_cli_chain_to_the_bundle() {
    let server = Server::start();
    register(&server, "bot");
    let out = server.cli_json(&["agent", "svid", "bot"]);
    let chain = pem_certs(out["svid"].as_str().unwrap());
    assert_eq!(chain.len(), 1);
    let (_, _, doc) = get_json(&server, "/.well-known/spiffe-bundle").await;
    let root = STANDARD.decode(doc["keys"][0]["x5c"][0].as_str().unwrap()).unwrap();
    assert_eq!(pem_certs(out["bundle"].as_str().unwrap()), vec![root.clone()]);
    assert!(signed_by(&chain[0], &root));
    let leaf = parse(&chain[0]);
    assert_eq!(uri_sans(&leaf), vec!["spiffe://mandate.local/agent/bot".to_owned()]);
    assert!(!leaf.is_ca());
    let ttl = leaf.validity().not_after.timestamp() - now_secs();
    assert!((3500..=3600).contains(&ttl), "{ttl}");
    assert!(out["key"].as_str().unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    // The human form is the PEM chain followed by the key.
    let human = server.cli(&["agent", "svid", "bot"]);
    assert!(human.starts_with("-----BEGIN CERTIFICATE-----") && human.contains("-----BEGIN PRIVATE KEY-----"));
    let issued = events(&server, "svid.x509.issue");
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[0]["jti"], hex::encode(leaf.raw_serial()));
    assert_eq!(issued[0]["owner"], "alice");
}

#[tokio::test]
async fn a_join_token_bootstraps_an_agent_once() {
    let server = Server::start();
    register(&server, "bot");
    let created = server.cli_json(&["agent", "join-token", "bot"]);
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("mjt_"));
    assert_eq!(created["spiffe_id"], "spiffe://mandate.local/agent/bot");
    let expires_in = created["expires_at"].as_i64().unwrap() - now_secs();
    assert!((890..=900).contains(&expires_in), "{expires_in}");

    let key = KeyPair::generate().unwrap();
    let body = json!({"token": token, "csr": csr(&key, "spiffe://evil.example/agent/admin")});
    let (status, joined) = join(&server, &body).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["spiffe_id"], "spiffe://mandate.local/agent/bot");
    let chain = pem_certs(joined["svid"].as_str().unwrap());
    let bundle = pem_certs(joined["bundle"].as_str().unwrap());
    assert_eq!((chain.len(), bundle.len()), (1, 1));
    assert!(signed_by(&chain[0], &bundle[0]));
    let leaf = parse(&chain[0]);
    // The CSR's key is certified; the identity is the token's agent, not what the CSR asked for.
    assert_eq!(leaf.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
    assert_eq!(uri_sans(&leaf), vec!["spiffe://mandate.local/agent/bot".to_owned()]);
    assert_eq!(joined["expires_at"], leaf.validity().not_after.timestamp());

    let (status, again) = join(&server, &body).await;
    assert_eq!(status, 401);
    assert_eq!(again["error"], "invalid_token");
    assert!(again["error_description"].as_str().unwrap().contains("already used"));

    let attempts = events(&server, "spiffe.join");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["decision"], "allow");
    assert_eq!(attempts[0]["agent"], "spiffe://mandate.local/agent/bot");
    assert_eq!(attempts[0]["owner"], "alice");
    assert_eq!(attempts[0]["jti"], hex::encode(leaf.raw_serial()));
    assert_eq!(attempts[1]["decision"], "deny");
    assert_eq!(events(&server, "join_token.create").len(), 1);
    assert!(server.audit_events().iter().all(|e| !e.to_string().contains(&token)), "token leaked into the log");
}

#[tokio::test]
async fn expired_unknown_and_malformed_joins_are_refused() {
    let server = Server::start();
    register(&server, "bot");
    let key = KeyPair::generate().unwrap();
    let good_csr = csr(&key, "spiffe://mandate.local/agent/bot");

    let (status, body) = join(&server, &json!({"token": "mjt_nope", "csr": good_csr})).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("invalid_token")));

    let token = server.cli_json(&["agent", "join-token", "bot"])["token"].as_str().unwrap().to_owned();
    // A CSR whose signature does not verify, garbage, missing fields, wrong media type: 400,
    // and none of them spends the token.
    let der = pem_certs(&good_csr.replace("CERTIFICATE REQUEST", "CERTIFICATE")).remove(0);
    let mut tampered = der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let bad_csr = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        STANDARD.encode(&tampered)
    );
    for body in [json!({"token": token, "csr": bad_csr}), json!({"token": token, "csr": "x"}), json!({"token": token})]
    {
        let (status, answer) = join(&server, &body).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_request")), "{body}");
    }
    let text = server
        .http
        .post(server.url("/spiffe/v1/join"))
        .header("content-type", "text/plain")
        .body(json!({"token": token, "csr": good_csr}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 400);
    let (status, _) = join(&server, &json!({"token": token, "csr": good_csr})).await;
    assert_eq!(status, 200, "the malformed attempts must not have spent the token");

    let short =
        server.cli_json(&["agent", "join-token", "bot", "--ttl-secs", "1"])["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = join(&server, &json!({"token": short, "csr": good_csr})).await;
    assert_eq!(status, 401);
    assert!(body["error_description"].as_str().unwrap().contains("expired"), "{body}");

    let attempts = events(&server, "spiffe.join");
    assert_eq!(attempts.len(), 7);
    assert_eq!(attempts.iter().filter(|e| e["decision"] == "allow").count(), 1);
    assert!(!server.cli_raw(&["agent", "join-token", "ghost"]).status.success());
}

#[tokio::test]
async fn selectors_are_replaced_from_the_cli() {
    let server = Server::start();
    register(&server, "bot");
    let set =
        server.cli_json(&["agent", "selectors", "bot", "--selector", "unix:uid:1000", "--selector", "unix:gid:5"]);
    assert_eq!(set["selectors"], json!(["unix:uid:1000", "unix:gid:5"]));
    let agents = server.cli_json(&["agent", "list"]);
    assert_eq!(agents[0]["selectors"], json!(["unix:uid:1000", "unix:gid:5"]));
    assert!(!server.cli_raw(&["agent", "selectors", "bot", "--selector", "no-colon"]).status.success());
    server.cli(&["agent", "selectors", "bot"]);
    assert_eq!(server.cli_json(&["agent", "list"])[0]["selectors"], json!([]));
    let events = events(&server, "agent.selectors.set");
    let decisions: Vec<&str> = events.iter().map(|e| e["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["allow", "deny", "allow"]);
}

/// An operator root CA (PEM certificate, PEM key) that is valid now.
fn operator_root() -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "Operator Root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

#[tokio::test]
async fn an_upstream_root_signs_the_ca_and_is_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, root_der) = operator_root();
    let cert_path = dir.path().join("root.pem");
    let key_path = dir.path().join("root.key");
    std::fs::write(&cert_path, cert_pem).unwrap();
    std::fs::write(&key_path, key_pem).unwrap();
    let config = dir.path().join("mandate.toml");
    std::fs::write(
        &config,
        format!(
            "trust_domain = \"agents.example\"\nspiffe_upstream_ca_cert = {:?}\nspiffe_upstream_ca_key = {:?}\n",
            cert_path.to_str().unwrap(),
            key_path.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let server = Server::start_in(dir, &[("MANDATE_CONFIG", config.as_str())]);

    let (_, _, doc) = get_json(&server, "/.well-known/spiffe-bundle").await;
    let x509: Vec<&Value> = doc["keys"].as_array().unwrap().iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 1);
    assert_eq!(STANDARD.decode(x509[0]["x5c"][0].as_str().unwrap()).unwrap(), root_der);

    let _ = server.cli_raw(&["--config", &config, "owner", "create", "alice"]);
    server.cli(&["--config", &config, "agent", "create", "bot", "--owner", "alice"]);
    let token =
        server.cli_json(&["--config", &config, "agent", "join-token", "bot"])["token"].as_str().unwrap().to_owned();
    let key = KeyPair::generate().unwrap();
    let (status, joined) = join(&server, &json!({"token": token, "csr": csr(&key, "spiffe://x/y")})).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["spiffe_id"], "spiffe://agents.example/agent/bot");
    let chain = pem_certs(joined["svid"].as_str().unwrap());
    assert_eq!(chain.len(), 2, "leaf + Mandate's intermediate");
    assert_eq!(pem_certs(joined["bundle"].as_str().unwrap()), vec![root_der.clone()]);
    assert!(signed_by(&chain[0], &chain[1]));
    assert!(signed_by(&chain[1], &root_der));
    let intermediate = parse(&chain[1]);
    assert!(intermediate.is_ca());
    assert_eq!(uri_sans(&intermediate), vec!["spiffe://agents.example".to_owned()]);

    // The CLI, given the same configuration, issues under the same intermediate.
    let out = server.cli_json(&["--config", &config, "agent", "svid", "bot"]);
    let cli_chain = pem_certs(out["svid"].as_str().unwrap());
    assert_eq!(cli_chain[1], chain[1]);
}
