//! RFC 7591 dynamic client registration (`POST /oauth2/register`), and the client-metadata rules
//! it shares with Client ID Metadata Documents (`crate::cimd`): redirect URIs, code grants, the
//! authentication method and its keys, and the descriptive fields that are stored and echoed.

use mandate_core::{AuditEvent, Client, ClientAuthMethod, OAuthError, OAuthErrorCode, ScopeSet};
use mandate_crypto::{hash_secret, random_token};
use mandate_store::Mutation;
use serde_json::{Map, Value, json};

use crate::client_auth::parse_jwks;
use crate::registry::{CODE_GRANTS, RegistryError, check_redirect_uri, client_credential};
use crate::{Authz, conclude};

/// Largest registration request body.
pub const MAX_REGISTRATION_BYTES: usize = 16 * 1024;
/// Prefix of generated client ids; never `https://`, which would read as a metadata document.
pub const CLIENT_ID_PREFIX: &str = "dyn.";
pub const MAX_REDIRECT_URIS: usize = 20;
const MAX_URI_BYTES: usize = 2048;
const MAX_TEXT_CHARS: usize = 256;
const MAX_CONTACTS: usize = 10;

/// Why client metadata was refused; registration answers `invalid_redirect_uri` or
/// `invalid_client_metadata` (RFC 7591 §3.2.2), a metadata document `invalid_client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetadataError {
    RedirectUri(String),
    Invalid(String),
}

impl MetadataError {
    pub(crate) fn message(self) -> String {
        match self {
            Self::RedirectUri(m) | Self::Invalid(m) => m,
        }
    }

    fn for_registration(self) -> OAuthError {
        match self {
            Self::RedirectUri(m) => OAuthError::new(OAuthErrorCode::InvalidRedirectUri, m),
            Self::Invalid(m) => OAuthError::new(OAuthErrorCode::InvalidClientMetadata, m),
        }
    }
}

fn invalid(message: impl Into<String>) -> MetadataError {
    MetadataError::Invalid(message.into())
}

/// What metadata may say in one context (registration or metadata document).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// The method when `token_endpoint_auth_method` is absent.
    pub default_auth: ClientAuthMethod,
    pub allowed_auth: &'static [ClientAuthMethod],
    /// Whether keys may be named by URL (fetched) instead of given inline as `jwks`.
    pub jwks_uri_allowed: bool,
    pub name_required: bool,
}

/// Client metadata that passed the rules.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientMetadata {
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub auth_method: ClientAuthMethod,
    /// The inline JWK Set (checked), for `private_key_jwt`.
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    pub client_name: Option<String>,
    /// Accepted descriptive fields (`client_uri`, `scope`, `contacts`, …) as given.
    pub descriptive: Map<String, Value>,
}

/// Checks every field Mandate understands; others are ignored (RFC 7591 §2).
pub(crate) fn parse_metadata(doc: &Map<String, Value>, rules: &Rules) -> Result<ClientMetadata, MetadataError> {
    let redirect_uris = redirect_uris(doc)?;
    let (grant_types, response_types) = code_grants(doc)?;
    let auth_method = auth_method(doc, rules)?;
    let (jwks, jwks_uri) = keys(doc, auth_method, rules)?;
    let client_name = text(doc, "client_name")?;
    if rules.name_required && client_name.is_none() {
        return Err(invalid("client_name is required"));
    }
    Ok(ClientMetadata {
        redirect_uris,
        grant_types,
        response_types,
        auth_method,
        jwks,
        jwks_uri,
        client_name,
        descriptive: descriptive(doc)?,
    })
}

fn redirect_uris(doc: &Map<String, Value>) -> Result<Vec<String>, MetadataError> {
    let bad = |m: &str| MetadataError::RedirectUri(m.to_owned());
    let value =
        doc.get("redirect_uris").ok_or_else(|| bad("redirect_uris is required for the authorization_code grant"))?;
    let uris = string_array(value).ok_or_else(|| bad("redirect_uris must be an array of strings"))?;
    if uris.is_empty() {
        return Err(bad("redirect_uris must not be empty"));
    }
    if uris.len() > MAX_REDIRECT_URIS {
        return Err(bad(&format!("at most {MAX_REDIRECT_URIS} redirect URIs are accepted")));
    }
    for uri in &uris {
        if uri.len() > MAX_URI_BYTES {
            return Err(bad(&format!("a redirect URI may have at most {MAX_URI_BYTES} bytes")));
        }
        check_redirect_uri(uri).map_err(MetadataError::RedirectUri)?;
    }
    Ok(dedup(uris))
}

/// `grant_types` ⊆ {authorization_code, refresh_token} (default authorization_code) and
/// `response_types` ⊆ {code} (default code); `code` needs `authorization_code` (RFC 7591 §2.1).
fn code_grants(doc: &Map<String, Value>) -> Result<(Vec<String>, Vec<String>), MetadataError> {
    let grants = list_or(doc, "grant_types", "authorization_code")?;
    if let Some(other) = grants.iter().find(|g| !CODE_GRANTS.contains(&g.as_str())) {
        return Err(invalid(format!(
            "grant type {other:?} is not available to this client; use authorization_code and refresh_token"
        )));
    }
    if !grants.iter().any(|g| g == "authorization_code") {
        return Err(invalid("grant_types must include authorization_code (response type code needs it)"));
    }
    let responses = list_or(doc, "response_types", "code")?;
    if let Some(other) = responses.iter().find(|r| *r != "code") {
        return Err(invalid(format!("response type {other:?} is not supported; only code")));
    }
    if responses.is_empty() {
        return Err(invalid("response_types must not be empty"));
    }
    Ok((grants, responses))
}

fn auth_method(doc: &Map<String, Value>, rules: &Rules) -> Result<ClientAuthMethod, MetadataError> {
    let Some(value) = doc.get("token_endpoint_auth_method") else {
        return Ok(rules.default_auth);
    };
    let raw = value.as_str().ok_or_else(|| invalid("token_endpoint_auth_method must be a string"))?;
    if raw == "client_secret_jwt" {
        return Err(invalid("client_secret_jwt is not supported; use private_key_jwt"));
    }
    let method = ClientAuthMethod::parse(raw)
        .ok_or_else(|| invalid(format!("token_endpoint_auth_method {raw:?} is not supported")))?;
    if !rules.allowed_auth.contains(&method) {
        let allowed: Vec<&str> = rules.allowed_auth.iter().map(|m| m.as_str()).collect();
        return Err(invalid(format!(
            "token_endpoint_auth_method {raw} is not allowed here; use {}",
            allowed.join(", ")
        )));
    }
    Ok(method)
}

/// `jwks` xor `jwks_uri`, and only with `private_key_jwt`, which needs one of them.
fn keys(
    doc: &Map<String, Value>,
    method: ClientAuthMethod,
    rules: &Rules,
) -> Result<(Option<String>, Option<String>), MetadataError> {
    let jwks = doc.get("jwks");
    let jwks_uri = doc.get("jwks_uri");
    if jwks.is_some() && jwks_uri.is_some() {
        return Err(invalid("jwks and jwks_uri are mutually exclusive"));
    }
    if jwks_uri.is_some() && !rules.jwks_uri_allowed {
        return Err(invalid("jwks_uri is not supported here; send the public keys inline as jwks"));
    }
    let keyed = jwks.is_some() || jwks_uri.is_some();
    match (method, keyed) {
        (ClientAuthMethod::PrivateKeyJwt, false) => return Err(invalid("private_key_jwt needs jwks")),
        (ClientAuthMethod::PrivateKeyJwt, true) => {}
        (_, true) => return Err(invalid("jwks and jwks_uri are only for private_key_jwt")),
        (_, false) => return Ok((None, None)),
    }
    if let Some(uri) = jwks_uri {
        let uri = uri.as_str().filter(|u| u.len() <= MAX_URI_BYTES).ok_or_else(|| invalid("jwks_uri must be a URL"))?;
        return Ok((None, Some(uri.to_owned())));
    }
    let jwks = jwks.filter(|j| j.is_object()).ok_or_else(|| invalid("jwks must be a JWK Set object"))?;
    let text = jwks.to_string();
    parse_jwks(&text).map_err(|e| invalid(format!("jwks: {e}")))?;
    Ok((Some(text), None))
}

/// Optional human-readable text: a non-blank string of at most [`MAX_TEXT_CHARS`] characters
/// without control characters (it is shown on the consent page and written to the audit log).
fn text(doc: &Map<String, Value>, name: &str) -> Result<Option<String>, MetadataError> {
    let Some(value) = doc.get(name) else {
        return Ok(None);
    };
    let raw = value.as_str().ok_or_else(|| invalid(format!("{name} must be a string")))?;
    let fits = !raw.trim().is_empty() && raw.chars().count() <= MAX_TEXT_CHARS && !raw.chars().any(char::is_control);
    if !fits {
        return Err(invalid(format!("{name} must be 1 to {MAX_TEXT_CHARS} printable characters")));
    }
    Ok(Some(raw.to_owned()))
}

/// The descriptive fields Mandate keeps, each checked for its shape.
fn descriptive(doc: &Map<String, Value>) -> Result<Map<String, Value>, MetadataError> {
    let mut kept = Map::new();
    for name in ["client_uri", "logo_uri", "tos_uri", "policy_uri", "backchannel_logout_uri"] {
        if let Some(value) = doc.get(name) {
            let uri = value.as_str().ok_or_else(|| invalid(format!("{name} must be a string")))?;
            check_web_url(uri).map_err(|why| invalid(format!("{name} {why}")))?;
            kept.insert(name.into(), value.clone());
        }
    }
    for name in ["software_id", "software_version"] {
        if let Some(value) = text(doc, name)? {
            kept.insert(name.into(), Value::String(value));
        }
    }
    if let Some(value) = doc.get("scope") {
        let scope = value.as_str().ok_or_else(|| invalid("scope must be a string"))?;
        ScopeSet::parse(scope).map_err(|e| invalid(format!("scope: {e}")))?;
        kept.insert("scope".into(), value.clone());
    }
    if let Some(value) = doc.get("contacts") {
        let contacts = string_array(value).ok_or_else(|| invalid("contacts must be an array of strings"))?;
        let fits = |c: &String| !c.trim().is_empty() && c.chars().count() <= MAX_TEXT_CHARS;
        if contacts.len() > MAX_CONTACTS || !contacts.iter().all(fits) {
            return Err(invalid(format!("contacts: at most {MAX_CONTACTS} of at most {MAX_TEXT_CHARS} characters")));
        }
        kept.insert("contacts".into(), value.clone());
    }
    if let Some(value) = doc.get("application_type") {
        if !matches!(value.as_str(), Some("web" | "native")) {
            return Err(invalid("application_type must be web or native"));
        }
        kept.insert("application_type".into(), value.clone());
    }
    Ok(kept)
}

/// Links shown to people: https, or http to a loopback host (local development).
pub(crate) fn check_web_url(raw: &str) -> Result<(), String> {
    if raw.len() > MAX_URI_BYTES {
        return Err(format!("may have at most {MAX_URI_BYTES} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("is not an absolute URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be an https URL".into()),
    }
}

fn string_array(value: &Value) -> Option<Vec<String>> {
    value.as_array()?.iter().map(|v| v.as_str().map(str::to_owned)).collect()
}

fn list_or(doc: &Map<String, Value>, name: &str, default: &str) -> Result<Vec<String>, MetadataError> {
    match doc.get(name) {
        None => Ok(vec![default.to_owned()]),
        Some(value) => {
            string_array(value).map(dedup).ok_or_else(|| invalid(format!("{name} must be an array of strings")))
        }
    }
}

fn dedup(mut items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    items.retain(|item| seen.insert(item.clone()));
    items
}

/// What registration may say: any of the four methods (RFC 7591 default
/// `client_secret_basic`), keys inline only.
const REGISTRATION_RULES: Rules = Rules {
    default_auth: ClientAuthMethod::ClientSecretBasic,
    allowed_auth: &[
        ClientAuthMethod::None,
        ClientAuthMethod::ClientSecretBasic,
        ClientAuthMethod::ClientSecretPost,
        ClientAuthMethod::PrivateKeyJwt,
    ],
    jwks_uri_allowed: false,
    name_required: false,
};

/// Registers a client for anyone who asks (RFC 7591 §3.1, no initial access token): it gets no
/// agent, only the code grants, and acts only for owners who sign in and consent. Answers the
/// `201` body: the client id, the secret once (stored hashed), and the accepted metadata.
pub async fn register(authz: &Authz, body: &[u8], correlation_id: &str) -> Result<Value, OAuthError> {
    let mut event = AuditEvent::allow("registry.client.register", correlation_id).with_detail("caller=anonymous");
    let outcome = prepare(authz, body).map(|(client, response)| {
        describe(&mut event, &client);
        (response, Some(Mutation::CreateClient(client)))
    });
    conclude(authz, event, outcome, |refused| {
        tracing::error!(error = %refused, "a generated client id was refused");
        OAuthError::server_error("the client could not be stored; try again")
    })
    .await
}

fn prepare(authz: &Authz, body: &[u8]) -> Result<(Client, Value), OAuthError> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| invalid("the request body must be a JSON object").for_registration())?;
    let doc = doc.as_object().ok_or_else(|| invalid("the request body must be a JSON object").for_registration())?;
    let meta = parse_metadata(doc, &REGISTRATION_RULES).map_err(MetadataError::for_registration)?;
    let (secret, jwks) = client_credential(meta.auth_method, meta.jwks.clone()).map_err(|e| {
        let message = match e {
            RegistryError::Invalid(m) => m,
            other => other.to_string(),
        };
        invalid(message).for_registration()
    })?;
    let mut stored = meta.descriptive.clone();
    stored.insert("response_types".into(), json!(meta.response_types));
    let client = Client {
        client_id: format!("{CLIENT_ID_PREFIX}{}", &hash_secret(&random_token(""))[..20]),
        agent: None,
        auth_method: meta.auth_method,
        secret_hash: secret.as_deref().map(hash_secret),
        jwks,
        can_introspect: false,
        redirect_uris: meta.redirect_uris.clone(),
        grant_types: meta.grant_types.clone(),
        client_name: meta.client_name.clone(),
        metadata: Some(Value::Object(stored.clone()).to_string()),
        created_at_ms: authz.clock.now_ms(),
    };
    let response = response(authz, &client, secret, stored);
    Ok((client, response))
}

/// The RFC 7591 §3.2.1 body: what was registered, with the secret shown this once.
fn response(authz: &Authz, client: &Client, secret: Option<String>, stored: Map<String, Value>) -> Value {
    let mut body = json!({
        "client_id": client.client_id,
        "client_id_issued_at": authz.clock.now_secs(),
        "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": client.auth_method.as_str(),
        "grant_types": client.grant_types,
    });
    let Some(obj) = body.as_object_mut() else {
        return body;
    };
    if let Some(secret) = secret {
        obj.insert("client_secret".into(), Value::String(secret));
        obj.insert("client_secret_expires_at".into(), json!(0));
    }
    if let Some(name) = &client.client_name {
        obj.insert("client_name".into(), Value::String(name.clone()));
    }
    if let Some(jwks) = client.jwks.as_deref().and_then(|j| serde_json::from_str::<Value>(j).ok()) {
        obj.insert("jwks".into(), jwks);
    }
    obj.extend(stored);
    body
}

/// The audit record: who registered (nobody known), which client, and where it redirects to.
fn describe(event: &mut AuditEvent, client: &Client) {
    event.client = Some(client.client_id.clone());
    let hosts: Vec<String> = client
        .redirect_uris
        .iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .map(|u| u.host_str().map_or_else(|| format!("{}:", u.scheme()), str::to_owned))
        .collect();
    event.detail = Some(format!(
        "caller=anonymous auth_method={} grant_types={} redirect_hosts={}",
        client.auth_method.as_str(),
        client.grant_types.join(","),
        dedup(hosts).join(","),
    ));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(doc: Value) -> Result<ClientMetadata, MetadataError> {
        parse_metadata(doc.as_object().unwrap(), &REGISTRATION_RULES)
    }

    fn base() -> Value {
        json!({"redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": "none"})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut doc = base();
        doc[field] = value;
        doc
    }

    #[test]
    fn defaults_follow_rfc_7591() {
        let meta = parse(json!({"redirect_uris": ["https://app.example/cb"]})).unwrap();
        assert_eq!(meta.auth_method, ClientAuthMethod::ClientSecretBasic);
        assert_eq!(meta.grant_types, ["authorization_code"]);
        assert_eq!(meta.response_types, ["code"]);
        assert!(meta.descriptive.is_empty());
    }

    #[test]
    fn redirect_uris_are_required_and_checked() {
        let redirect = |doc: Value| matches!(parse(doc), Err(MetadataError::RedirectUri(_)));
        assert!(redirect(json!({"token_endpoint_auth_method": "none"})));
        assert!(redirect(with("redirect_uris", json!([]))));
        assert!(redirect(with("redirect_uris", json!("https://app.example/cb"))));
        assert!(redirect(with("redirect_uris", json!([7]))));
        let many: Vec<String> = (0..=MAX_REDIRECT_URIS).map(|i| format!("https://app.example/{i}")).collect();
        assert!(redirect(with("redirect_uris", json!(many))));
        for bad in ["http://app.example/cb", "https://app.example/cb#x", "javascript:alert(1)", "/relative"] {
            assert!(redirect(with("redirect_uris", json!([bad]))), "{bad}");
        }
        let ok = parse(with("redirect_uris", json!(["http://127.0.0.1:9/cb", "com.example.app:/cb"]))).unwrap();
        assert_eq!(ok.redirect_uris.len(), 2);
    }

    #[test]
    fn only_code_grants_and_the_code_response_type() {
        let meta = parse(with("grant_types", json!(["authorization_code", "refresh_token"]))).unwrap();
        assert_eq!(meta.grant_types, ["authorization_code", "refresh_token"]);
        for bad in [json!(["client_credentials"]), json!(["refresh_token"]), json!("authorization_code"), json!([])] {
            assert!(matches!(parse(with("grant_types", bad.clone())), Err(MetadataError::Invalid(_))), "{bad}");
        }
        for bad in [json!(["token"]), json!(["code", "id_token"]), json!([])] {
            assert!(matches!(parse(with("response_types", bad.clone())), Err(MetadataError::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn auth_methods_and_keys() {
        let jwk = mandate_crypto::SigningKey::generate(mandate_crypto::Alg::ES256).unwrap().public().jwk().clone();
        let jwks = json!({"keys": [jwk]});
        let refused = |doc: Value| parse(doc).unwrap_err().message();
        assert!(refused(with("token_endpoint_auth_method", json!("client_secret_jwt"))).contains("not supported"));
        assert!(refused(with("token_endpoint_auth_method", json!("tls_client_auth"))).contains("not supported"));
        assert!(refused(with("token_endpoint_auth_method", json!(1))).contains("string"));
        let pkj = |extra: &[(&str, Value)]| {
            let mut doc = with("token_endpoint_auth_method", json!("private_key_jwt"));
            for (k, v) in extra {
                doc[*k] = v.clone();
            }
            doc
        };
        assert!(refused(pkj(&[])).contains("needs jwks"));
        assert!(refused(pkj(&[("jwks_uri", json!("https://app.example/jwks"))])).contains("inline"));
        let both = pkj(&[("jwks", jwks.clone()), ("jwks_uri", json!("https://app.example/jwks"))]);
        assert!(refused(both).contains("mutually exclusive"));
        assert!(refused(pkj(&[("jwks", json!({"keys": []}))])).contains("jwks"));
        assert!(refused(pkj(&[("jwks", json!("text"))])).contains("JWK Set"));
        assert!(refused(with("jwks", jwks.clone())).contains("only for private_key_jwt"));
        let meta = parse(pkj(&[("jwks", jwks)])).unwrap();
        assert_eq!(meta.auth_method, ClientAuthMethod::PrivateKeyJwt);
        assert!(meta.jwks.is_some());
    }

    #[test]
    fn descriptive_fields_are_checked_and_kept() {
        let doc = json!({
            "redirect_uris": ["https://app.example/cb"], "client_name": "Notes", "client_uri": "https://app.example",
            "logo_uri": "https://app.example/logo.png", "scope": "notes:read notes:write",
            "contacts": ["ops@app.example"], "software_id": "notes-app", "software_version": "1.2",
            "application_type": "native", "policy_uri": "http://localhost:3000/policy", "unknown": {"x": 1},
        });
        let meta = parse(doc).unwrap();
        assert_eq!(meta.client_name.as_deref(), Some("Notes"));
        assert_eq!(meta.descriptive.len(), 8);
        assert!(!meta.descriptive.contains_key("unknown"), "unknown fields are not kept");
        let refused = |field: &str, value: Value| parse(with(field, value)).is_err();
        assert!(refused("client_uri", json!("javascript:alert(1)")));
        assert!(refused("logo_uri", json!("http://app.example/logo.png")));
        assert!(refused("tos_uri", json!(5)));
        assert!(refused("backchannel_logout_uri", json!("http://app.example/logout")));
        assert!(refused("scope", json!("bad\"scope")));
        assert!(refused("contacts", json!("ops@app.example")));
        assert!(refused("contacts", json!(vec!["a@b.example"; MAX_CONTACTS + 1])));
        assert!(refused("application_type", json!("desktop")));
        assert!(refused("client_name", json!("")));
        assert!(refused("client_name", json!("x".repeat(MAX_TEXT_CHARS + 1))));
        assert!(refused("client_name", json!("line\nbreak")));
        assert!(refused("software_id", json!(["a"])));
    }

    #[test]
    fn errors_map_to_rfc_7591_codes() {
        let redirect = MetadataError::RedirectUri("x".into()).for_registration();
        assert_eq!(redirect.code, OAuthErrorCode::InvalidRedirectUri);
        assert_eq!(invalid("x").for_registration().code, OAuthErrorCode::InvalidClientMetadata);
    }
}
