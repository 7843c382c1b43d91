//! Txn-Tokens from a Transaction Token Service over HTTP, for a gateway that is not co-located
//! with the server: an RFC 8693 token exchange at the TTS's token endpoint, authenticated with
//! the gateway's own confidential client (`client_secret_basic`). The TTS audits every mint.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use mandate_authz::exchange::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN};
use mandate_authz::txn_token::TOKEN_TYPE_TXN_TOKEN;
use mandate_core::{Clock, OAuthError, OAuthErrorCode};
use mandate_crypto::jose::peek_claims;
use mandate_guard::{DEFAULT_VERIFIED_CAPACITY, Guard, GuardConfig, RemoteKeys, SignalRevocations};
use serde_json::Value;
use tokio::task::JoinHandle;
use url::Url;

use crate::mint::{MintInput, MintOutcome, Minted, TxnMinter};
use crate::proxy::{Gateway, GatewayConfig, GatewayError};

/// Deadline for one exchange at the TTS, connection and answer included.
pub const TTS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest TTS answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const REQUEST_ID: &str = "x-request-id";

/// The gateway's credential at the TTS: a confidential client of an agent registered for
/// token exchange. Not `Debug`, so the secret cannot end up in a log line.
pub struct TtsClient {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
}

impl TtsClient {
    /// `Basic …` with this client's credentials (RFC 6749 §2.3.1: each part form-encoded).
    fn basic_authorization(&self) -> String {
        let encode = |part: &str| url::form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>();
        let pair = format!("{}:{}", encode(&self.client_id), encode(&self.client_secret));
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }
}

/// A gateway away from the server: the guard trusts the issuer's published keys, revocations
/// come from the gateway client's Shared Signals stream (when polled), Txn-Tokens from the TTS.
pub struct Remote<'a> {
    pub issuer: &'a str,
    pub trust_domain: &'a str,
    /// The gateway's public URL: the resource its tokens must be issued for.
    pub resource: &'a str,
    pub tts: TtsClient,
    /// The RFC 8936 poll endpoint of the gateway client's SSF stream at `issuer`. Without it
    /// only signature and expiry are checked: a revoked token counts until it expires.
    pub ssf_poll: Option<&'a str>,
    pub clock: Arc<dyn Clock>,
    pub config: GatewayConfig,
}

impl Gateway {
    /// The remote gateway, and the SSF poller's task when `ssf_poll` is set.
    pub fn remote(setup: Remote<'_>) -> Result<(Self, Option<JoinHandle<()>>), GatewayError> {
        let mut guard_config = GuardConfig::new(setup.resource, vec![setup.issuer.to_owned()])?;
        guard_config.scopes_supported = setup.config.scopes.to_vec();
        let keys = Arc::new(RemoteKeys::new(Arc::clone(&setup.clock)).map_err(|e| GatewayError::Keys(e.to_string()))?);
        let mut guard = Guard::new(guard_config, keys.clone(), Arc::clone(&setup.clock))
            .with_verified_cache(DEFAULT_VERIFIED_CAPACITY);
        let mut poller = None;
        if let Some(url) = setup.ssf_poll {
            // A client's stream is addressed to its client id and polled with its credentials.
            let receiver =
                Arc::new(SignalRevocations::new(setup.issuer, &setup.tts.client_id, keys, Arc::clone(&setup.clock)));
            let task = receiver.spawn_poller(url, &setup.tts.basic_authorization()).map_err(GatewayError::Signals)?;
            poller = Some(task);
            guard = guard.with_revocation(receiver);
        }
        let minter = Arc::new(HttpMinter::new(setup.tts, setup.trust_domain)?);
        Ok((Self::new(setup.config, Arc::new(guard), minter, None, setup.trust_domain), poller))
    }
}

/// A [`TxnMinter`] that asks a remote TTS. The TTS records its own `txn_token.issue` event, so
/// the outcome carries no event for the gateway to record.
pub struct HttpMinter {
    http: reqwest::Client,
    tts: TtsClient,
    /// The trust domain: every Txn-Token's `audience`.
    audience: String,
}

impl HttpMinter {
    pub fn new(tts: TtsClient, trust_domain: &str) -> Result<Self, GatewayError> {
        let bad = || GatewayError::Tts(format!("{:?} must be an http(s):// URL", tts.token_url));
        let url = Url::parse(&tts.token_url).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad());
        }
        if tts.client_id.is_empty() || tts.client_secret.is_empty() {
            return Err(GatewayError::Tts("the client id and secret must not be empty".into()));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TTS_TIMEOUT)
            .connect_timeout(TTS_TIMEOUT)
            .build()
            .map_err(|e| GatewayError::Tts(e.to_string()))?;
        Ok(Self { http, tts, audience: trust_domain.to_owned() })
    }

    async fn exchange(&self, input: &MintInput<'_>, correlation_id: &str) -> Result<Minted, OAuthError> {
        let (context, details) = (input.request_context.to_string(), input.request_details.to_string());
        let form = [
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("requested_token_type", TOKEN_TYPE_TXN_TOKEN),
            ("subject_token", input.subject_token),
            ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
            ("audience", self.audience.as_str()),
            ("request_context", context.as_str()),
            ("request_details", details.as_str()),
        ];
        let response = self
            .http
            .post(&self.tts.token_url)
            .header(reqwest::header::AUTHORIZATION, self.tts.basic_authorization())
            // The TTS's audit event then shares the gateway request's correlation id.
            .header(REQUEST_ID, correlation_id)
            .form(&form)
            .send()
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let body = read_bounded(response).await?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return minted(&answer);
        }
        if status.is_client_error() {
            return Err(refused(&answer, status.as_u16()));
        }
        Err(OAuthError::server_error(format!("the Transaction Token Service answered HTTP {}", status.as_u16())))
    }
}

#[async_trait]
impl TxnMinter for HttpMinter {
    async fn mint(&self, input: &MintInput<'_>, correlation_id: &str) -> MintOutcome {
        self.exchange(input, correlation_id).await.into()
    }
}

fn unreachable(error: &reqwest::Error) -> OAuthError {
    let why = if error.is_timeout() { "timed out" } else { "is unreachable" };
    tracing::warn!(error = %error, "the Transaction Token Service {why}");
    OAuthError::server_error(format!("the Transaction Token Service {why}"))
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, OAuthError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(OAuthError::server_error("the Transaction Token Service's answer is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A successful exchange must have issued a Txn-Token whose `txn` can be read.
fn minted(answer: &Value) -> Result<Minted, OAuthError> {
    let malformed = || OAuthError::server_error("the Transaction Token Service's answer is not a Txn-Token");
    if answer.get("issued_token_type").and_then(Value::as_str) != Some(TOKEN_TYPE_TXN_TOKEN) {
        return Err(malformed());
    }
    let token = answer.get("access_token").and_then(Value::as_str).ok_or_else(malformed)?;
    // The TTS is trusted (an authenticated HTTPS peer); downstream hops verify the signature.
    let claims = peek_claims(token).map_err(|_| malformed())?;
    let txn = claims.get("txn").and_then(Value::as_str).ok_or_else(malformed)?;
    let expires_in = answer.get("expires_in").and_then(Value::as_i64).unwrap_or_default();
    Ok(Minted { token: token.to_owned(), txn: txn.to_owned(), expires_in })
}

/// A 4xx from the TTS. A refused gateway credential (`invalid_client`, `unauthorized_client`)
/// is the gateway's misconfiguration, not the caller's fault: a server error (502). Anything
/// else refuses the caller's token (403) with the TTS's code.
fn refused(answer: &Value, status: u16) -> OAuthError {
    let code = answer.get("error").and_then(Value::as_str).unwrap_or_default();
    let description = answer.get("error_description").and_then(Value::as_str).unwrap_or_default();
    if matches!(code, "invalid_client" | "unauthorized_client") {
        tracing::error!(%code, %description, "the Transaction Token Service refused the gateway's credentials");
        return OAuthError::server_error("the Transaction Token Service refused the gateway's credentials");
    }
    let code = match code {
        "invalid_request" => OAuthErrorCode::InvalidRequest,
        "invalid_grant" => OAuthErrorCode::InvalidGrant,
        "invalid_scope" => OAuthErrorCode::InvalidScope,
        "invalid_target" => OAuthErrorCode::InvalidTarget,
        "unsupported_token_type" => OAuthErrorCode::UnsupportedTokenType,
        "unsupported_grant_type" => OAuthErrorCode::UnsupportedGrantType,
        _ => OAuthErrorCode::AccessDenied,
    };
    let description = if description.is_empty() {
        format!("the Transaction Token Service refused (HTTP {status})")
    } else {
        description.to_owned()
    };
    OAuthError::new(code, description)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use base64::Engine;
    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;

    type Seen = Arc<Mutex<Vec<(HeaderMap, HashMap<String, String>)>>>;

    /// A fake TTS that records each request and answers `status` with `body`.
    async fn tts(status: StatusCode, answer: Value) -> (String, Seen) {
        let seen = Seen::default();
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/oauth2/token",
            post(move |headers: HeaderMap, body: Bytes| {
                let form = url::form_urlencoded::parse(&body).into_owned().collect();
                log.lock().push((headers, form));
                let answer = answer.clone();
                async move { (status, axum::Json(answer)).into_response() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    fn minter(url: &str) -> HttpMinter {
        let tts = TtsClient { token_url: url.into(), client_id: "gw".into(), client_secret: "s3cret".into() };
        HttpMinter::new(tts, "mandate.local").unwrap()
    }

    fn input() -> MintInput<'static> {
        static CLAIMS: Value = Value::Null;
        MintInput {
            subject_token: "inbound-at",
            subject_claims: &CLAIMS,
            request_context: json!({"req_ip": "127.0.0.1"}),
            request_details: json!({"tool": "pay"}),
            workload: "spiffe://mandate.local/gateway",
        }
    }

    fn txn_token() -> String {
        let part = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", part(json!({"typ": "txntoken+jwt", "alg": "ES256"})), part(json!({"txn": "t-1"})))
    }

    #[tokio::test]
    async fn exchanges_the_access_token_for_a_txn_token() {
        let token = txn_token();
        let answer = json!({"access_token": token, "issued_token_type": TOKEN_TYPE_TXN_TOKEN, "expires_in": 60});
        let (url, seen) = tts(StatusCode::OK, answer).await;
        let outcome = minter(&url).mint(&input(), "corr-1").await;
        assert!(outcome.audit.is_none(), "the TTS audits the mint itself");
        assert_eq!(outcome.result.unwrap(), Minted { token, txn: "t-1".into(), expires_in: 60 });
        let (headers, form) = seen.lock().pop().unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("gw:s3cret");
        assert_eq!(headers["authorization"], format!("Basic {basic}").as_str());
        assert_eq!(headers[REQUEST_ID], "corr-1");
        assert_eq!(form["grant_type"], GRANT_TOKEN_EXCHANGE);
        assert_eq!(form["requested_token_type"], TOKEN_TYPE_TXN_TOKEN);
        assert_eq!(
            (form["subject_token"].as_str(), form["subject_token_type"].as_str()),
            ("inbound-at", TOKEN_TYPE_ACCESS_TOKEN)
        );
        assert_eq!(form["audience"], "mandate.local");
        assert_eq!(serde_json::from_str::<Value>(&form["request_details"]).unwrap(), json!({"tool": "pay"}));
        assert_eq!(serde_json::from_str::<Value>(&form["request_context"]).unwrap(), json!({"req_ip": "127.0.0.1"}));
    }

    #[tokio::test]
    async fn an_answer_that_is_not_a_txn_token_is_a_server_error() {
        let answer = json!({"access_token": txn_token(), "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN});
        let (url, _) = tts(StatusCode::OK, answer).await;
        let error = minter(&url).mint(&input(), "c").await.result.unwrap_err();
        assert_eq!(error.code, OAuthErrorCode::ServerError);
        let answer = json!({"access_token": "not-a-jwt", "issued_token_type": TOKEN_TYPE_TXN_TOKEN});
        let (url, _) = tts(StatusCode::OK, answer).await;
        let error = minter(&url).mint(&input(), "c").await.result.unwrap_err();
        assert_eq!(error.code, OAuthErrorCode::ServerError);
    }

    #[tokio::test]
    async fn a_refused_subject_token_keeps_the_tts_code() {
        let answer = json!({"error": "invalid_grant", "error_description": "the subject token has expired"});
        let (url, _) = tts(StatusCode::BAD_REQUEST, answer).await;
        let error = minter(&url).mint(&input(), "c").await.result.unwrap_err();
        assert_eq!(
            (error.code, error.description.as_str()),
            (OAuthErrorCode::InvalidGrant, "the subject token has expired")
        );
        let (url, _) = tts(StatusCode::FORBIDDEN, Value::Null).await;
        assert_eq!(minter(&url).mint(&input(), "c").await.result.unwrap_err().code, OAuthErrorCode::AccessDenied);
    }

    #[tokio::test]
    async fn a_refused_gateway_credential_is_a_server_error() {
        let (url, _) = tts(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"})).await;
        let error = minter(&url).mint(&input(), "c").await.result.unwrap_err();
        assert_eq!(error.code, OAuthErrorCode::ServerError);
        assert!(error.description.contains("credentials"), "{}", error.description);
    }

    #[tokio::test]
    async fn a_failing_or_unreachable_tts_is_a_server_error() {
        let (url, _) = tts(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "server_error"})).await;
        assert_eq!(minter(&url).mint(&input(), "c").await.result.unwrap_err().code, OAuthErrorCode::ServerError);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let error = minter(&format!("http://{closed}/token")).mint(&input(), "c").await.result.unwrap_err();
        assert_eq!(error.code, OAuthErrorCode::ServerError);
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        let tts = TtsClient { token_url: String::new(), client_id: "a:b".into(), client_secret: "c d".into() };
        let encoded = base64::engine::general_purpose::STANDARD.encode("a%3Ab:c+d");
        assert_eq!(tts.basic_authorization(), format!("Basic {encoded}"));
    }

    #[test]
    fn the_tts_url_and_credential_are_checked() {
        let make = |url: &str, secret: &str| {
            let tts = TtsClient { token_url: url.into(), client_id: "gw".into(), client_secret: secret.into() };
            HttpMinter::new(tts, "mandate.local").map(drop)
        };
        assert!(make("ftp://as.example/token", "s").is_err());
        assert!(make("not a url", "s").is_err());
        assert!(make("https://as.example/token", "").is_err());
        assert!(make("https://as.example/token", "s").is_ok());
    }
}
