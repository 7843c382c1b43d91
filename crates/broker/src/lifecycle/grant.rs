//! One request to a token endpoint (RFC 6749 form POST, client authentication per RFC 6749
//! §2.3.1), its bounded and validated response, and the agent's JWT-SVID from the SPIFFE
//! Workload API for the JWT bearer grant (RFC 7523 §2.1).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::vault::{ClientAuth, MAX_SECRET_LEN, SecretString};

pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// What the token endpoint is expected to issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An access token to send as `Bearer`.
    Bearer,
    /// An ID-JAG from a token exchange (`issued_token_type` id-jag, `token_type` `N_A`).
    IdJag,
}
/// Largest token response read (access tokens are a few KiB at most).
const MAX_RESPONSE: usize = 64 * 1024;

/// How the client authenticates; no secret means a public client (`client_id` in the form).
pub struct ClientCredentials<'a> {
    pub client_id: &'a str,
    pub secret: Option<&'a SecretString>,
    pub auth: ClientAuth,
}

/// A successful token response.
#[derive(Debug)]
pub struct TokenResponse {
    pub access_token: SecretString,
    pub expires_in: Option<i64>,
    pub refresh_token: Option<SecretString>,
}

#[derive(Deserialize)]
struct RawResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    issued_token_type: Option<String>,
}

#[derive(Deserialize)]
struct RawError {
    error: String,
}

/// POSTs `form` (plus client authentication) to `endpoint`; the error is a reason that never
/// contains a secret (only the status and the AS's `error` code).
pub async fn request(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
    client: Option<&ClientCredentials<'_>>,
    expect: Expect,
) -> Result<TokenResponse, String> {
    let (body, authorization) = encode(form, client)?;
    let mut request = http
        .post(endpoint)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body.as_str().to_owned());
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    let mut response = request.send().await.map_err(|e| format!("token endpoint unreachable: {}", without_url(&e)))?;
    let status = response.status();
    let mut bytes = Zeroizing::new(Vec::new());
    while let Some(chunk) =
        response.chunk().await.map_err(|e| format!("reading the token response: {}", without_url(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_RESPONSE {
            return Err("token response larger than 64 KiB".into());
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let code = serde_json::from_slice::<RawError>(&bytes)
            .ok()
            .map(|e| e.error)
            .filter(|c| !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        return Err(format!(
            "token endpoint answered {} {}",
            status.as_u16(),
            code.as_deref().unwrap_or("(no error code)")
        ));
    }
    parse_success(&bytes, expect)
}

/// The form body (with `client_id`/`client_secret` for public and `client_secret_post`
/// clients) and, for `client_secret_basic`, the Authorization header.
fn encode(
    form: &[(&str, &str)],
    client: Option<&ClientCredentials<'_>>,
) -> Result<(Zeroizing<String>, Option<HeaderValue>), String> {
    let mut body = form_urlencoded::Serializer::new(String::new());
    body.extend_pairs(form);
    let mut authorization = None;
    if let Some(client) = client {
        match (client.secret, client.auth) {
            (None, _) => {
                body.append_pair("client_id", client.client_id);
            }
            (Some(secret), ClientAuth::ClientSecretPost) => {
                body.append_pair("client_id", client.client_id).append_pair("client_secret", secret.expose());
            }
            (Some(secret), ClientAuth::ClientSecretBasic) => {
                authorization = Some(basic(client.client_id, secret)?);
            }
        }
    }
    Ok((Zeroizing::new(body.finish()), authorization))
}

fn parse_success(bytes: &[u8], expect: Expect) -> Result<TokenResponse, String> {
    let raw: RawResponse =
        serde_json::from_slice(bytes).map_err(|_| "token response is not a valid JSON token response")?;
    let access_token = SecretString::from(Zeroizing::new(raw.access_token));
    let refresh_token = raw.refresh_token.map(|t| SecretString::from(Zeroizing::new(t)));
    for token in std::iter::once(&access_token).chain(&refresh_token) {
        let value = token.expose();
        if value.is_empty() || value.len() > MAX_SECRET_LEN || value.chars().any(|c| c.is_control()) {
            return Err("token response carries an empty, oversized or malformed token".into());
        }
    }
    match expect {
        // A DPoP-bound token is useless without its proof key, which the agent never has.
        Expect::Bearer if raw.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) => {
            return Err("token response is not a Bearer token".into());
        }
        Expect::IdJag if raw.issued_token_type.as_deref() != Some(TOKEN_TYPE_ID_JAG) => {
            return Err("token exchange did not issue an ID-JAG".into());
        }
        _ => {}
    }
    if raw.expires_in.is_some_and(|e| e <= 0) {
        return Err("token response has a non-positive expires_in".into());
    }
    Ok(TokenResponse { access_token, expires_in: raw.expires_in, refresh_token })
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1), marked sensitive.
fn basic(client_id: &str, secret: &SecretString) -> Result<HeaderValue, String> {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = Zeroizing::new(format!("{}:{}", encode(client_id), Zeroizing::new(encode(secret.expose())).as_str()));
    let header = Zeroizing::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())));
    let mut value = HeaderValue::from_str(&header).map_err(|_| "client credentials do not fit a header")?;
    value.set_sensitive(true);
    Ok(value)
}

/// reqwest errors name the URL; keep only the kind of failure.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    kind.to_owned()
}

/// The issuer a Mandate token endpoint belongs to (`<issuer>/oauth2/token`); for other
/// endpoints, their origin.
pub fn issuer_of(token_endpoint: &str) -> String {
    if let Some(issuer) = token_endpoint.strip_suffix("/oauth2/token") {
        return issuer.to_owned();
    }
    let (scheme, rest) = token_endpoint.split_once("://").unwrap_or(("https", token_endpoint));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    format!("{scheme}://{authority}")
}

/// A JWT-SVID for `audience` from the Workload API at `socket` (this process is attested by
/// the server; nothing is stored).
pub async fn fetch_jwt_svid(socket: &Path, audience: &str, spiffe_id: Option<&str>) -> Result<SecretString, String> {
    let id = spiffe_id
        .map(spiffe::SpiffeId::new)
        .transpose()
        .map_err(|e| format!("invalid spiffe_id in the vault entry: {e}"))?;
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", socket.display()))
        .await
        .map_err(|e| format!("cannot reach the Workload API: {e}"))?;
    let svid = client
        .fetch_jwt_svid([audience], id.as_ref())
        .await
        .map_err(|e| format!("the Workload API gave no JWT-SVID: {e}"))?;
    Ok(SecretString::new(svid.token()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn issuer_of_a_mandate_token_endpoint_drops_the_path() {
        assert_eq!(issuer_of("https://as.example/oauth2/token"), "https://as.example");
        assert_eq!(issuer_of("https://as.example/t/oauth2/token"), "https://as.example/t");
        assert_eq!(issuer_of("https://as.example:8443/token"), "https://as.example:8443");
    }

    #[test]
    fn token_responses_are_validated() {
        assert!(
            parse_success(br#"{"access_token":"at","token_type":"Bearer","expires_in":60}"#, Expect::Bearer).is_ok()
        );
        assert!(parse_success(br#"{"access_token":"at"}"#, Expect::Bearer).is_ok());
        let id_jag = format!(r#"{{"access_token":"j","token_type":"N_A","issued_token_type":"{TOKEN_TYPE_ID_JAG}"}}"#);
        assert!(parse_success(id_jag.as_bytes(), Expect::IdJag).is_ok());
        assert!(parse_success(br#"{"access_token":"j","token_type":"N_A"}"#, Expect::IdJag).is_err());
        for bad in [
            &br#"{"token_type":"Bearer"}"#[..],
            br#"{"access_token":""}"#,
            br#"{"access_token":"a\nb"}"#,
            br#"{"access_token":"at","token_type":"DPoP"}"#,
            br#"{"access_token":"at","expires_in":0}"#,
            br#"{"access_token":"at","refresh_token":""}"#,
            b"not json",
        ] {
            assert!(parse_success(bad, Expect::Bearer).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        let value = basic("a b", &SecretString::new("p:w")).unwrap();
        assert!(value.is_sensitive());
        let decoded = STANDARD.decode(value.to_str().unwrap().strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(decoded, b"a+b:p%3Aw");
    }
}
