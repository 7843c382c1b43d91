//! Client identification against the real binary: RFC 7591 dynamic registration (public and
//! confidential clients, every refusal, the switch that turns it off) and Client ID Metadata
//! Documents served by a loopback test server (valid documents usable at the token endpoint,
//! each kind of bad document refused, secure mode never fetching from internal addresses).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey};
use serde_json::{Value, json};

use crate::harness::{RESOURCE, Server};

const INSECURE: (&str, &str) = ("MANDATE_ALLOW_INSECURE_FEDERATION", "true");
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

async fn register(server: &Server, body: &Value) -> (u16, Value, Option<String>) {
    let response = server.http.post(server.url("/oauth2/register")).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let cache = response.headers().get(header::CACHE_CONTROL).map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap_or(Value::Null), cache)
}

async fn metadata(server: &Server) -> Value {
    let url = server.url("/.well-known/oauth-authorization-server");
    server.http.get(url).send().await.unwrap().json().await.unwrap()
}

/// A client_credentials request: a client that authenticates but is only registered for the code
/// grants gets `unauthorized_client`, which shows it was found and authenticated.
async fn client_credentials(server: &Server, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
    let mut fields = vec![("grant_type", "client_credentials"), ("resource", RESOURCE)];
    fields.extend_from_slice(form);
    let mut request = server.http.post(server.url("/oauth2/token")).form(&fields);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn error_of(body: &Value) -> (&str, &str) {
    (body["error"].as_str().unwrap_or_default(), body["error_description"].as_str().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_registration_creates_public_and_confidential_clients() {
    let server = Server::start();
    let meta = metadata(&server).await;
    assert_eq!(meta["registration_endpoint"], json!(server.url("/oauth2/register")));
    assert_eq!(meta["client_id_metadata_document_supported"], json!(true));

    // A public client as MCP SDKs register one; unknown fields are ignored and not echoed.
    let (status, body, cache) = register(
        &server,
        &json!({
            "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "client_name": "Notes CLI", "application_type": "native", "scope": "read write",
            "software_id": "notes-cli", "software_version": "1.0", "contacts": ["ops@notes.example"],
            "client_uri": "https://notes.example", "made_up_field": {"x": 1}, "software_statement": "a.b.c",
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    let public_id = body["client_id"].as_str().unwrap().to_owned();
    assert!(public_id.starts_with("dyn."), "{public_id}");
    assert!(body["client_id_issued_at"].as_i64().unwrap() > 1_700_000_000);
    assert!(body.get("client_secret").is_none());
    assert_eq!(body["token_endpoint_auth_method"], "none");
    assert_eq!(body["grant_types"], json!(["authorization_code", "refresh_token"]));
    assert_eq!(body["redirect_uris"], json!([REDIRECT]));
    for (field, value) in [
        ("client_name", json!("Notes CLI")),
        ("application_type", json!("native")),
        ("scope", json!("read write")),
        ("software_id", json!("notes-cli")),
        ("response_types", json!(["code"])),
    ] {
        assert_eq!(body[field], value, "{field}");
    }
    assert!(body.get("made_up_field").is_none() && body.get("software_statement").is_none());

    // RFC 7591's default method is client_secret_basic: a secret, shown once, that works.
    let (status, body, _) = register(&server, &json!({"redirect_uris": ["https://notes.example/cb"]})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["token_endpoint_auth_method"], "client_secret_basic");
    assert_eq!(body["grant_types"], json!(["authorization_code"]));
    assert_eq!(body["client_secret_expires_at"], 0);
    let (id, secret) = (body["client_id"].as_str().unwrap(), body["client_secret"].as_str().unwrap());

    server.cli(&["resource", "create", RESOURCE, "--scope", "read"]);
    let (status, body) = client_credentials(&server, &[], Some((id, secret))).await;
    assert_eq!((status, error_of(&body).0), (400, "unauthorized_client"), "{body}");
    let (status, body) = client_credentials(&server, &[], Some((id, "wrong"))).await;
    assert_eq!((status, error_of(&body).0), (401, "invalid_client"), "{body}");
    let (status, body) = client_credentials(&server, &[("client_id", &public_id)], None).await;
    assert_eq!((status, error_of(&body).0), (400, "unauthorized_client"), "{body}");

    // private_key_jwt with inline keys.
    let key = SigningKey::generate(Alg::ES256).unwrap();
    let jwks = json!({"keys": [key.public().jwk()]});
    let (status, body, _) = register(
        &server,
        &json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt", "jwks": jwks}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.get("client_secret").is_none());
    assert_eq!(body["jwks"]["keys"][0]["kid"], json!(key.kid()));

    let events = server.audit_events();
    let registered: Vec<&Value> = events.iter().filter(|e| e["action"] == "registry.client.register").collect();
    assert_eq!(registered.len(), 3);
    assert!(registered.iter().all(|e| e["decision"] == "allow"));
    assert_eq!(registered[0]["client"], json!(public_id));
    let detail = registered[0]["detail"].as_str().unwrap();
    assert!(detail.contains("caller=anonymous") && detail.contains("redirect_hosts=127.0.0.1"), "{detail}");
    let log = serde_json::to_string(&events).unwrap();
    assert!(!log.contains(secret), "the client secret reached the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registration_refusal_has_its_rfc_7591_error_and_is_audited() {
    let server = Server::start();
    let jwks = json!({"keys": [SigningKey::generate(Alg::ES256).unwrap().public().jwk()]});
    let public = |extra: Value| {
        let mut doc = json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"});
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        doc
    };
    let cases = [
        (public(json!({"redirect_uris": ["http://notes.example/cb"]})), "invalid_redirect_uri", "https"),
        (public(json!({"redirect_uris": ["https://notes.example/cb#top"]})), "invalid_redirect_uri", "fragment"),
        (public(json!({"redirect_uris": ["javascript:alert(1)"]})), "invalid_redirect_uri", "not allowed"),
        (json!({"token_endpoint_auth_method": "none"}), "invalid_redirect_uri", "required"),
        (public(json!({"redirect_uris": []})), "invalid_redirect_uri", "empty"),
        (public(json!({"token_endpoint_auth_method": "tls_client_auth"})), "invalid_client_metadata", "not supported"),
        (
            public(json!({"token_endpoint_auth_method": "client_secret_jwt"})),
            "invalid_client_metadata",
            "client_secret_jwt",
        ),
        (
            public(json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": jwks,
                "jwks_uri": "https://notes.example/jwks"})),
            "invalid_client_metadata",
            "mutually exclusive",
        ),
        (
            public(json!({"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "https://notes.example/jwks"})),
            "invalid_client_metadata",
            "inline",
        ),
        (public(json!({"token_endpoint_auth_method": "private_key_jwt"})), "invalid_client_metadata", "needs jwks"),
        (public(json!({"grant_types": ["client_credentials"]})), "invalid_client_metadata", "grant type"),
        (public(json!({"response_types": ["token"]})), "invalid_client_metadata", "response type"),
        (public(json!({"logo_uri": "javascript:alert(1)"})), "invalid_client_metadata", "logo_uri"),
        (json!([REDIRECT]), "invalid_client_metadata", "JSON object"),
    ];
    for (body, code, words) in &cases {
        let (status, answer, _) = register(&server, body).await;
        assert_eq!((status, error_of(&answer).0), (400, *code), "{body}: {answer}");
        assert!(error_of(&answer).1.contains(words), "{body}: {answer}");
    }
    // Transport-level refusals: not JSON, the wrong media type, too large.
    let raw = |content_type: &'static str, body: String| {
        server.http.post(server.url("/oauth2/register")).header(header::CONTENT_TYPE, content_type).body(body).send()
    };
    let response = raw("application/json", "{not json".into()).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_client_metadata");
    let response = raw("application/x-www-form-urlencoded", "redirect_uris=x".into()).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_request");
    let big = json!({"redirect_uris": [REDIRECT], "client_name": "x".repeat(17 * 1024)}).to_string();
    assert_eq!(raw("application/json", big).await.unwrap().status(), 413);

    let events = server.audit_events();
    let refusals: Vec<&Value> = events.iter().filter(|e| e["action"] == "registry.client.register").collect();
    assert_eq!(refusals.len(), cases.len() + 3, "every refusal is audited");
    assert!(refusals.iter().all(|e| e["decision"] == "deny" && e["client"].is_null()));
    assert_eq!(refusals[0]["reason"], "invalid_redirect_uri");
    let clients = server.cli_json(&["client", "list"]);
    assert_eq!(clients.as_array().map(Vec::len), Some(0), "nothing was registered: {clients}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_metadata_documents_can_be_turned_off() {
    let env = [("MANDATE_DYNAMIC_REGISTRATION", "false"), ("MANDATE_CLIENT_ID_METADATA_DOCUMENTS", "false"), INSECURE];
    let server = Server::start_in(tempfile::tempdir().unwrap(), &env);
    let (status, _, _) = register(&server, &json!({"redirect_uris": [REDIRECT]})).await;
    assert_eq!(status, 404);
    let meta = metadata(&server).await;
    assert!(meta.get("registration_endpoint").is_none(), "{meta}");
    assert_eq!(meta["client_id_metadata_document_supported"], json!(false));
    let docs = Documents::start().await;
    let url = docs.url("public");
    let (status, body) = client_credentials(&server, &[("client_id", &url)], None).await;
    assert_eq!((status, error_of(&body).0), (401, "invalid_client"), "{body}");
    assert!(error_of(&body).1.contains("not accepted"), "{body}");
    assert_eq!(docs.hits(), 0);
}

/// Client ID Metadata Documents on loopback: `/clients/<name>.json`, counted.
struct Documents {
    base: String,
    hits: Arc<AtomicUsize>,
    key: Arc<SigningKey>,
}

impl Documents {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let key = Arc::new(SigningKey::generate(Alg::ES256).unwrap());
        let (counter, at, jwk) = (Arc::clone(&hits), base.clone(), key.public().jwk().clone());
        let app = axum::Router::new().route(
            "/clients/{file}",
            get(move |axum::extract::Path(file): axum::extract::Path<String>| {
                counter.fetch_add(1, Ordering::SeqCst);
                let (at, jwk) = (at.clone(), jwk.clone());
                async move { document(&at, file.trim_end_matches(".json"), jwk) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, hits, key }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/clients/{name}.json", self.base)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn document(base: &str, name: &str, jwk: Value) -> axum::response::Response {
    let url = format!("{base}/clients/{name}.json");
    let mut doc = json!({"client_id": url, "client_name": "Notes", "redirect_uris": [REDIRECT]});
    match name {
        "public" => {}
        "signed" => {
            doc["token_endpoint_auth_method"] = json!("private_key_jwt");
            doc["jwks"] = json!({"keys": [jwk]});
        }
        "impostor" => doc["client_id"] = json!("https://notes.example/client.json"),
        "shared-secret" => doc["token_endpoint_auth_method"] = json!("client_secret_post"),
        "oversize" => doc["padding"] = json!("x".repeat(6 * 1024)),
        "gone" => return StatusCode::GONE.into_response(),
        "moved" => return axum::response::Redirect::temporary("/clients/public.json").into_response(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    }
    ([(header::CACHE_CONTROL, "max-age=300")], axum::Json(doc)).into_response()
}

/// `GET /oauth2/authorize` for a metadata-document client; the status and the page.
async fn authorize(server: &Server, client_id: &str) -> (u16, String) {
    let query = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        ("code_challenge_method", "S256"),
        ("resource", RESOURCE),
        ("state", "s"),
    ];
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = reqwest::Url::parse_with_params(&server.url("/oauth2/authorize"), &query).unwrap();
    let response = client.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn assertion(key: &SigningKey, client_id: &str, audience: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let jti = format!("{}-{}", std::process::id(), now);
    let claims = json!({"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + 60, "jti": jti});
    sign_jwt(key, "client-authentication+jwt", &claims).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_documents_identify_clients_at_the_token_endpoint() {
    let server = Server::start_in(tempfile::tempdir().unwrap(), &[INSECURE]);
    server.cli(&["resource", "create", RESOURCE, "--scope", "read"]);
    let docs = Documents::start().await;

    // A public client: found, authenticated as public, registered for the code grant only.
    let public = docs.url("public");
    let (status, body) = client_credentials(&server, &[("client_id", &public)], None).await;
    assert_eq!((status, error_of(&body).0), (400, "unauthorized_client"), "{body}");
    client_credentials(&server, &[("client_id", &public)], None).await;
    assert_eq!(docs.hits(), 1, "the document was cached");

    // private_key_jwt: the assertion verifies with the document's keys, and only with them.
    let signed = docs.url("signed");
    let token_endpoint = server.url("/oauth2/token");
    let good = assertion(&docs.key, &signed, &token_endpoint);
    let form = [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", good.as_str())];
    let (status, body) = client_credentials(&server, &form, None).await;
    assert_eq!((status, error_of(&body).0), (400, "unauthorized_client"), "{body}");
    let stranger = SigningKey::generate(Alg::ES256).unwrap();
    let forged = assertion(&stranger, &signed, &token_endpoint);
    let form = [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", forged.as_str())];
    let (status, body) = client_credentials(&server, &form, None).await;
    assert_eq!((status, error_of(&body).0), (401, "invalid_client"), "{body}");
    // Presenting no credential for a private_key_jwt document is not a downgrade to public.
    let (status, body) = client_credentials(&server, &[("client_id", &signed)], None).await;
    assert_eq!((status, error_of(&body).0), (401, "invalid_client"), "{body}");

    let before = docs.hits();
    let refusals = [
        ("impostor", "client_id differs from its URL"),
        ("shared-secret", "shared-secret"),
        ("oversize", "exceeds"),
        ("gone", "HTTP 410"),
        ("missing", "HTTP 404"),
        ("moved", "redirect"),
    ];
    for (name, words) in refusals {
        let url = docs.url(name);
        for _ in 0..2 {
            let (status, body) = client_credentials(&server, &[("client_id", &url)], None).await;
            assert_eq!((status, error_of(&body).0), (401, "invalid_client"), "{name}: {body}");
            assert!(error_of(&body).1.contains(words), "{name}: {body}");
        }
    }
    assert_eq!(docs.hits() - before, 2 * refusals.len(), "refusals are never cached; the redirect was not followed");

    // The authorization endpoint: the sign-in page for a good document, an error page (never a
    // redirect to a URI no valid document vouched for) for a bad one.
    let (status, page) = authorize(&server, &public).await;
    assert_eq!(status, 200);
    assert!(page.contains("name=\"password\""), "{page}");
    let (status, page) = authorize(&server, &docs.url("impostor")).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("client_id differs from its URL"), "{page}");

    let events = server.audit_events();
    let impostor = docs.url("impostor");
    let denied = events.iter().find(|e| e["client"] == json!(impostor) && e["action"] == "token.issue").unwrap();
    assert_eq!((denied["decision"].as_str(), denied["reason"].as_str()), (Some("deny"), Some("invalid_client")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_mode_never_fetches_documents_from_internal_addresses() {
    let server = Server::start();
    let docs = Documents::start().await;
    let port = docs.base.rsplit(':').next().unwrap().to_owned();
    let cases = [
        (docs.url("public"), "https"),
        (format!("https://localhost:{port}/clients/public.json"), "loopback"),
        (format!("https://127.0.0.1:{port}/clients/public.json"), "loopback"),
        ("https://10.0.0.1/clients/public.json".to_owned(), "private"),
        ("https://notes.example/".to_owned(), "path"),
        ("https://notes.example/a/../client.json".to_owned(), ".."),
    ];
    for (url, words) in &cases {
        let (status, body) = client_credentials(&server, &[("client_id", url)], None).await;
        assert_eq!((status, error_of(&body).0), (401, "invalid_client"), "{url}: {body}");
        assert!(error_of(&body).1.contains(words), "{url}: {body}");
    }
    assert_eq!(docs.hits(), 0, "Mandate never connected to the loopback server");
}
