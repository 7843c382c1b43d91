//! An internal call chain behind `mandate gateway`: order → risk → payment, each a tiny axum
//! service that accepts only a valid Txn-Token (`require_txn_token`) and passes the very same
//! token on unchanged. Payment, the last hop, reports who the call is for (`sub`) and who acts (`act`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use mandate_guard::{TXN_TOKEN_HEADER, TxnContext, TxnTokenVerifier, require_txn_token};
use serde_json::{Value, json};

/// Which service of the chain this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Order,
    Risk,
    Payment,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Risk => "risk",
            Self::Payment => "payment",
        }
    }
}

#[derive(Clone)]
struct Hop {
    role: Role,
    /// The next service's URL; `None` for payment.
    next: Option<String>,
    http: reqwest::Client,
}

/// The service for `role`: every path, behind Txn-Token verification. Order and risk call `next`.
pub fn router(role: Role, verifier: Arc<TxnTokenVerifier>, next: Option<String>) -> Router {
    let hop = Hop { role, next, http: reqwest::Client::new() };
    Router::new().fallback(handle).layer(from_fn_with_state(verifier, require_txn_token)).with_state(hop)
}

async fn handle(State(hop): State<Hop>, request: Request) -> Response {
    let Some(context) = request.extensions().get::<TxnContext>().cloned() else {
        // The middleware always inserts it; without it nothing here may run.
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match &hop.next {
        None => payment(&context).into_response(),
        Some(next) => {
            // The verified header, forwarded byte for byte.
            let token = request.headers().get(TXN_TOKEN_HEADER).cloned();
            call_next(&hop, next, token, &context).await
        }
    }
}

/// The last hop: logs and answers who the transaction is for and who acts in it.
fn payment(context: &TxnContext) -> axum::Json<Value> {
    let act = context.actor.clone().unwrap_or(Value::Null);
    println!("payment: txn={} sub={} act={act} req_wl={}", context.txn, context.subject, context.req_wl);
    axum::Json(json!({"service": "payment", "sub": context.subject, "act": act, "txn": context.txn,
        "tctx": context.tctx, "req_wl": context.req_wl}))
}

/// Calls the next hop with the same Txn-Token and wraps its answer (or passes its refusal on).
async fn call_next(hop: &Hop, next: &str, token: Option<axum::http::HeaderValue>, context: &TxnContext) -> Response {
    let mut request = hop.http.post(next);
    if let Some(token) = token {
        request = request.header(TXN_TOKEN_HEADER, token);
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(_) => {
            return (StatusCode::BAD_GATEWAY, axum::Json(json!({"error": "next hop unavailable"}))).into_response();
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return (status, axum::Json(body)).into_response();
    }
    axum::Json(json!({"service": hop.role.name(), "txn": context.txn, "next": body})).into_response()
}
