//! The three hops in process, trusting one test signing key: a Txn-Token flows order → risk →
//! payment unchanged, and a forged, expired, wrong-audience or misplaced one is refused at any hop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use mandate_core::{Clock, SystemClock};
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey};
use mandate_example_txn_chain::{Role, router};
use mandate_guard::{StaticKeys, TxnTokenVerifier};
use serde_json::{Value, json};

const ISSUER: &str = "https://mandate.example";
const DOMAIN: &str = "mandate.local";

struct Chain {
    key: SigningKey,
    /// order, risk, payment
    urls: Vec<String>,
    http: reqwest::Client,
}

async fn bind(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

impl Chain {
    async fn start() -> Self {
        mandate_crypto::init().unwrap();
        let key = SigningKey::generate(Alg::EdDSA).unwrap();
        let keys = Arc::new(StaticKeys::new(ISSUER, vec![key.public().clone()]));
        let verifier = Arc::new(TxnTokenVerifier::new(ISSUER, DOMAIN, keys, Arc::new(SystemClock)));
        let payment = bind(router(Role::Payment, Arc::clone(&verifier), None)).await;
        let risk = bind(router(Role::Risk, Arc::clone(&verifier), Some(payment.clone()))).await;
        let order = bind(router(Role::Order, verifier, Some(risk.clone()))).await;
        Self { key, urls: vec![order, risk, payment], http: reqwest::Client::new() }
    }

    fn claims(&self) -> Value {
        let now = SystemClock.now_secs();
        json!({"iss": ISSUER, "aud": DOMAIN, "iat": now, "exp": now + 60, "txn": "txn-42",
            "sub": "spiffe://mandate.local/agent/bot", "act": {"sub": "spiffe://mandate.local/agent/bot"},
            "scope": "read", "req_wl": "spiffe://mandate.local/gateway", "tctx": {"tool": "pay"}})
    }

    fn sign(&self, key: &SigningKey, claims: &Value) -> String {
        sign_jwt(key, "txntoken+jwt", claims).unwrap()
    }

    async fn call(&self, url: &str, header: &str, token: &str) -> (u16, Value) {
        let response = self.http.post(url).header(header, token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn one_txn_token_flows_through_three_hops() {
    let chain = Chain::start().await;
    let token = chain.sign(&chain.key, &chain.claims());
    let (status, body) = chain.call(&chain.urls[0], "txn-token", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"], "order");
    assert_eq!(body["txn"], "txn-42");
    assert_eq!(body["next"]["service"], "risk");
    let payment = &body["next"]["next"];
    assert_eq!(payment["service"], "payment");
    assert_eq!(payment["txn"], "txn-42");
    assert_eq!(payment["sub"], "spiffe://mandate.local/agent/bot");
    assert_eq!(payment["act"], json!({"sub": "spiffe://mandate.local/agent/bot"}));
    assert_eq!(payment["tctx"], json!({"tool": "pay"}));
}

#[tokio::test]
async fn bad_txn_tokens_are_refused_at_every_hop() {
    let chain = Chain::start().await;
    let other_key = SigningKey::generate(Alg::EdDSA).unwrap();
    let forged = chain.sign(&other_key, &chain.claims());
    let mut expired = chain.claims();
    expired["exp"] = json!(SystemClock.now_secs() - 10);
    let expired = chain.sign(&chain.key, &expired);
    let mut elsewhere = chain.claims();
    elsewhere["aud"] = json!("other.domain");
    let elsewhere = chain.sign(&chain.key, &elsewhere);
    let mut no_txn = chain.claims();
    no_txn.as_object_mut().unwrap().remove("txn");
    let no_txn = chain.sign(&chain.key, &no_txn);
    let as_access_token = sign_jwt(&chain.key, "at+jwt", &chain.claims()).unwrap();
    let good = chain.sign(&chain.key, &chain.claims());
    for url in &chain.urls {
        for (name, token) in [
            ("forged", &forged),
            ("expired", &expired),
            ("wrong audience", &elsewhere),
            ("no txn", &no_txn),
            ("wrong typ", &as_access_token),
        ] {
            assert_eq!(chain.call(url, "txn-token", token).await.0, 401, "{name} at {url}");
        }
        assert_eq!(chain.call(url, "authorization", &format!("Bearer {good}")).await.0, 401, "Authorization at {url}");
        assert_eq!(chain.http.post(url).send().await.unwrap().status(), 401, "no token at {url}");
    }
}
