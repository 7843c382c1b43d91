//! Downstream verification of Transaction Tokens (draft-ietf-oauth-transaction-tokens §7.2):
//! `typ: txntoken+jwt`, signed by the trust domain's token service, `aud` = the trust domain,
//! unexpired, with the required claims. Plus axum middleware that takes exactly one `Txn-Token`
//! header (never `Authorization`) and hands the handler a [`TxnContext`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mandate_core::Clock;
use mandate_crypto::VerifyOptions;
use mandate_crypto::jose::peek_typ;
use serde_json::{Value, json};

use crate::verify::{KeySource, verify_signed};

/// The request header that carries a Txn-Token.
pub const TXN_TOKEN_HEADER: &str = "txn-token";
const TXN_TOKEN_TYP: &str = "txntoken+jwt";

/// Verifies Txn-Tokens of one issuer for one trust domain.
pub struct TxnTokenVerifier {
    issuer: String,
    trust_domain: String,
    keys: Arc<dyn KeySource>,
    clock: Arc<dyn Clock>,
    leeway_secs: i64,
}

/// What a verified Txn-Token says about the transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnContext {
    pub txn: String,
    /// The principal (`sub`).
    pub subject: String,
    /// `act`: the agent acting, earlier actors nested inside.
    pub actor: Option<Value>,
    pub scope: String,
    pub tctx: Option<Value>,
    pub rctx: Option<Value>,
    pub req_wl: String,
    pub exp: i64,
    pub claims: Value,
}

impl TxnTokenVerifier {
    pub fn new(
        issuer: impl Into<String>,
        trust_domain: impl Into<String>,
        keys: Arc<dyn KeySource>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { issuer: issuer.into(), trust_domain: trust_domain.into(), keys, clock, leeway_secs: 0 }
    }

    /// Tolerated clock difference with the token service.
    pub fn with_leeway(mut self, leeway_secs: i64) -> Self {
        self.leeway_secs = leeway_secs;
        self
    }

    pub async fn verify(&self, token: &str) -> Result<TxnContext, String> {
        let opts = VerifyOptions {
            typ: &[TXN_TOKEN_TYP],
            typ_optional: false,
            issuer: Some(&self.issuer),
            audience: &[self.trust_domain.as_str()],
            now: self.clock.now_secs(),
            leeway_secs: self.leeway_secs,
        };
        let claims = verify_signed(self.keys.as_ref(), token, &self.issuer, &opts).await?;
        context_from(claims)
    }
}

/// The draft's required claims, typed (`aud` and `exp` were checked by the verification).
fn context_from(claims: Value) -> Result<TxnContext, String> {
    let text = |name: &str| {
        claims.get(name).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("claim {name:?} is missing"))
    };
    let object = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(value) if value.is_object() => Ok(Some(value.clone())),
        Some(_) => Err(format!("claim {name:?} is not an object")),
    };
    claims.get("iat").and_then(Value::as_i64).ok_or("claim \"iat\" is missing")?;
    Ok(TxnContext {
        txn: text("txn")?,
        subject: text("sub")?,
        actor: object("act")?,
        scope: text("scope")?,
        tctx: object("tctx")?,
        rctx: object("rctx")?,
        req_wl: text("req_wl")?,
        exp: claims.get("exp").and_then(Value::as_i64).ok_or("claim \"exp\" is missing")?,
        claims,
    })
}

/// axum middleware: exactly one Txn-Token header (never Authorization) → TxnContext extension, else 401.
pub async fn require_txn_token(
    State(verifier): State<Arc<TxnTokenVerifier>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = match presented_txn_token(&request) {
        Ok(token) => token,
        Err(why) => return refuse(&why),
    };
    match verifier.verify(&token).await {
        Ok(context) => {
            request.extensions_mut().insert(context);
            next.run(request).await
        }
        Err(why) => refuse(&format!("invalid Txn-Token: {why}")),
    }
}

/// The one `Txn-Token` header value. A Txn-Token in `Authorization` is refused (draft §7.2):
/// accepting it there would let it pass for an access token.
fn presented_txn_token(request: &Request) -> Result<String, String> {
    let headers = request.headers();
    let in_authorization = headers.get_all(header::AUTHORIZATION).iter().any(|value| {
        let token = value.to_str().ok().and_then(|v| v.split_once(' ')).map(|(_, t)| t.trim());
        token.and_then(|t| peek_typ(t).ok().flatten()).is_some_and(|typ| {
            let lower = typ.to_ascii_lowercase();
            lower.strip_prefix("application/").unwrap_or(&lower) == TXN_TOKEN_TYP
        })
    });
    if in_authorization {
        return Err("a Txn-Token must not be sent in the Authorization header".into());
    }
    let mut values = headers.get_all(TXN_TOKEN_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Err("a Txn-Token header is required".into()),
        (Some(_), Some(_)) => Err("more than one Txn-Token header".into()),
        (Some(value), None) => {
            value.to_str().map(|v| v.trim().to_owned()).map_err(|_| "the Txn-Token header is not ASCII".to_owned())
        }
    }
}

fn refuse(description: &str) -> Response {
    let body = json!({ "error": "invalid_txn_token", "error_description": description });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use mandate_core::ManualClock;
    use mandate_crypto::jose::sign_jwt;
    use mandate_crypto::{Alg, SigningKey};
    use tower::ServiceExt;

    use super::*;
    use crate::StaticKeys;

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://mandate.example";
    const TD: &str = "mandate.local";

    struct Setup {
        key: SigningKey,
        verifier: Arc<TxnTokenVerifier>,
        clock: ManualClock,
    }

    fn setup() -> Setup {
        mandate_crypto::init().unwrap();
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let clock = ManualClock::at_ms(NOW * 1000);
        let keys = Arc::new(StaticKeys::new(ISSUER, vec![key.public().clone()]));
        let verifier = Arc::new(TxnTokenVerifier::new(ISSUER, TD, keys, Arc::new(clock.clone())));
        Setup { key, verifier, clock }
    }

    fn claims() -> Value {
        json!({"iss": ISSUER, "iat": NOW, "exp": NOW + 60, "aud": TD, "txn": "t-1",
            "sub": "spiffe://mandate.local/agent/a", "act": {"sub": "spiffe://mandate.local/agent/a"},
            "scope": "read", "req_wl": "spiffe://mandate.local/gateway", "tctx": {"tool": "x"}})
    }

    impl Setup {
        fn token(&self, claims: &Value) -> String {
            sign_jwt(&self.key, TXN_TOKEN_TYP, claims).unwrap()
        }

        async fn call(&self, headers: &[(&str, &str)]) -> (StatusCode, Value) {
            let app = Router::new()
                .route(
                    "/",
                    get(|axum::Extension(context): axum::Extension<TxnContext>| async move {
                        Json(json!({"txn": context.txn, "sub": context.subject, "act": context.actor}))
                    }),
                )
                .layer(axum::middleware::from_fn_with_state(Arc::clone(&self.verifier), require_txn_token));
            let mut request = Request::builder().uri("/");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = app.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            (status, serde_json::from_slice(&bytes).unwrap())
        }
    }

    #[tokio::test]
    async fn a_valid_token_reaches_the_handler_with_its_context() {
        let s = setup();
        let context = s.verifier.verify(&s.token(&claims())).await.unwrap();
        assert_eq!((context.txn.as_str(), context.scope.as_str()), ("t-1", "read"));
        assert_eq!(context.actor, Some(json!({"sub": "spiffe://mandate.local/agent/a"})));
        assert_eq!((context.tctx, context.rctx), (Some(json!({"tool": "x"})), None));
        assert_eq!((context.req_wl.as_str(), context.exp), ("spiffe://mandate.local/gateway", NOW + 60));
        let (status, body) = s.call(&[(TXN_TOKEN_HEADER, &s.token(&claims()))]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["sub"], "spiffe://mandate.local/agent/a");
        assert_eq!(body["txn"], "t-1");
    }

    #[tokio::test]
    async fn a_forged_signature_is_refused() {
        let s = setup();
        let other = SigningKey::generate(Alg::EdDSA).unwrap();
        let forged = sign_jwt(&other, TXN_TOKEN_TYP, &claims()).unwrap();
        assert!(s.verifier.verify(&forged).await.is_err());
        // Same kid, other key: the signature itself fails.
        let (head, _) = s.token(&claims()).rsplit_once('.').map(|(a, b)| (a.to_owned(), b.to_owned())).unwrap();
        let (_, foreign_sig) = forged.rsplit_once('.').unwrap();
        assert!(s.verifier.verify(&format!("{head}.{foreign_sig}")).await.unwrap_err().contains("signature"));
        let (status, _) = s.call(&[(TXN_TOKEN_HEADER, &forged)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn an_expired_token_is_refused() {
        let s = setup();
        let token = s.token(&claims());
        s.clock.advance_ms(61_000);
        assert!(s.verifier.verify(&token).await.unwrap_err().contains("expired"));
    }

    #[tokio::test]
    async fn a_wrong_audience_is_refused() {
        let s = setup();
        let mut foreign = claims();
        foreign["aud"] = json!("other.example");
        assert!(s.verifier.verify(&s.token(&foreign)).await.unwrap_err().contains("audience"));
    }

    #[tokio::test]
    async fn another_issuer_is_refused() {
        let s = setup();
        let mut foreign = claims();
        foreign["iss"] = json!("https://elsewhere.example");
        assert!(s.verifier.verify(&s.token(&foreign)).await.is_err());
    }

    #[tokio::test]
    async fn an_access_token_is_not_a_txn_token() {
        let s = setup();
        let at = sign_jwt(&s.key, "at+jwt", &claims()).unwrap();
        assert!(s.verifier.verify(&at).await.unwrap_err().to_lowercase().contains("typ"));
        let (status, _) = s.call(&[(TXN_TOKEN_HEADER, &at)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn every_required_claim_is_required() {
        let s = setup();
        for name in ["iat", "txn", "sub", "scope", "req_wl", "aud", "exp"] {
            let mut partial = claims();
            partial.as_object_mut().unwrap().remove(name);
            assert!(s.verifier.verify(&s.token(&partial)).await.is_err(), "{name}");
        }
        let mut bad_tctx = claims();
        bad_tctx["tctx"] = json!("not an object");
        assert!(s.verifier.verify(&s.token(&bad_tctx)).await.is_err());
    }

    #[tokio::test]
    async fn exactly_one_txn_token_header_is_accepted() {
        let s = setup();
        let token = s.token(&claims());
        let (status, body) = s.call(&[(TXN_TOKEN_HEADER, &token), (TXN_TOKEN_HEADER, &token)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error_description"].as_str().unwrap().contains("more than one"));
        let (status, _) = s.call(&[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_txn_token_in_authorization_is_refused() {
        let s = setup();
        let token = s.token(&claims());
        let bearer = format!("Bearer {token}");
        let (status, body) = s.call(&[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error_description"].as_str().unwrap().contains("Authorization"));
        // Even beside a proper Txn-Token header.
        let (status, _) = s.call(&[("authorization", &bearer), (TXN_TOKEN_HEADER, &token)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
