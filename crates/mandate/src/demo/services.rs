//! The demo's protected side: an MCP-style JSON-RPC tools server and the order → risk → payment
//! chain, each accepting only a Txn-Token (`require_txn_token`), as services behind the gateway.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mandate_guard::{TXN_TOKEN_HEADER, TxnContext, TxnTokenVerifier, require_txn_token};
use serde_json::{Value, json};

use super::check::shown;

/// The MCP endpoint's path behind the gateway.
pub const MCP_PATH: &str = "/mcp";
/// The order service's path behind the gateway (the first hop of the chain).
pub const ORDERS_PATH: &str = "/orders";

/// The gateway's upstream: the MCP tools at [`MCP_PATH`] and the order service at
/// [`ORDERS_PATH`], which calls `risk`.
pub fn upstream(verifier: Arc<TxnTokenVerifier>, risk: String) -> Router {
    let order = Hop { name: "order", next: Some(risk), http: reqwest::Client::new() };
    Router::new()
        .route(MCP_PATH, post(mcp))
        .route(ORDERS_PATH, post(hop).with_state(order))
        .layer(from_fn_with_state(verifier, require_txn_token))
}

/// A later hop of the chain: `risk` (which calls `next`) or `payment` (the last, `next` = None).
pub fn chain_hop(name: &'static str, verifier: Arc<TxnTokenVerifier>, next: Option<String>) -> Router {
    let hop_state = Hop { name, next, http: reqwest::Client::new() };
    Router::new().fallback(hop).layer(from_fn_with_state(verifier, require_txn_token)).with_state(hop_state)
}

/// The tools: each answers with what it did and for whom (the Txn-Token's `sub` and `act`).
async fn mcp(request: Request) -> Response {
    let Some(context) = request.extensions().get::<TxnContext>().cloned() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024).await {
        Ok(body) => body,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return rpc_error(Value::Null, -32700, "parse error");
    };
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    if message.get("method").and_then(Value::as_str) != Some("tools/call") {
        return rpc_error(id, -32601, "only tools/call is offered");
    }
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let tool = params.get("name").and_then(Value::as_str).unwrap_or_default();
    let arguments = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
    let text = match tool {
        "read_record" => format!("record {}: status=active", shown(&arguments["id"])),
        "delete_record" => format!("record {} deleted", shown(&arguments["id"])),
        "transfer_funds" => format!("transferred {} to {}", shown(&arguments["amount"]), shown(&arguments["to"])),
        _ => return rpc_error(id, -32602, "unknown tool"),
    };
    let actor = context.actor.clone().unwrap_or(Value::Null);
    axum::Json(json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "content": [{"type": "text", "text": text}],
            "txn": {"txn": context.txn, "sub": context.subject, "act": actor},
        }
    }))
    .into_response()
}

fn rpc_error(id: Value, code: i64, message: &str) -> Response {
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})).into_response()
}

#[derive(Clone)]
struct Hop {
    name: &'static str,
    next: Option<String>,
    http: reqwest::Client,
}

/// One hop: reports what its verified Txn-Token says, and passes the very same token on.
async fn hop(State(hop): State<Hop>, request: Request) -> Response {
    let Some(context) = request.extensions().get::<TxnContext>().cloned() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let seen = json!({
        "service": hop.name,
        "txn": context.txn,
        "sub": context.subject,
        "act": context.actor.clone().unwrap_or(Value::Null),
        "req_wl": context.req_wl,
    });
    let Some(next) = &hop.next else {
        return axum::Json(json!({"hops": [seen]})).into_response();
    };
    let mut call = hop.http.post(next);
    if let Some(token) = request.headers().get(TXN_TOKEN_HEADER) {
        call = call.header(TXN_TOKEN_HEADER, token.clone());
    }
    let answer = match call.send().await {
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
    let mut hops = vec![seen];
    hops.extend(body.get("hops").and_then(Value::as_array).cloned().unwrap_or_default());
    axum::Json(json!({"hops": hops})).into_response()
}
