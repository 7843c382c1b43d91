//! The MCP side: JSON-RPC 2.0 over `POST /mcp` (streamable HTTP, answered with plain JSON, no
//! SSE): `initialize`, `ping`, `tools/list`, `tools/call`; notifications are accepted with 202.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::ScopeSet;
use mandate_guard::Principal;
use serde_json::{Value, json};

use crate::{App, READ_SCOPE, WRITE_SCOPE};

/// Protocol revisions this server speaks; the first one a client asks for that is listed here
/// is echoed, anything else gets [`DEFAULT_VERSION`].
const SUPPORTED_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];
const DEFAULT_VERSION: &str = "2025-06-18";
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
/// Bounds on what `add_note` keeps in memory.
const MAX_NOTE_CHARS: usize = 2000;
const MAX_NOTES: usize = 1000;

// JSON-RPC 2.0 error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// A note saved by `add_note`, listed by `list_notes` to its author only.
pub struct Note {
    author: String,
    text: String,
}

/// What a request turns into.
enum Outcome {
    Result(Value),
    Error(i64, String),
    /// An HTTP-level answer instead of a JSON-RPC one (the step-up challenge).
    Http(Response),
}

/// `POST /mcp`. The guard has already checked the token and `notes:read`.
pub async fn handle(
    State(app): State<Arc<App>>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = refuse_headers(&app, &headers) {
        return refusal;
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return rpc_error(StatusCode::BAD_REQUEST, Value::Null, PARSE_ERROR, "body is not JSON"),
    };
    let Some(object) = message.as_object() else {
        // Batches were removed from MCP in 2025-06-18; one message per request.
        return rpc_error(StatusCode::BAD_REQUEST, Value::Null, INVALID_REQUEST, "expected one JSON-RPC object");
    };
    let id = object.get("id").cloned();
    let method = object.get("method").and_then(Value::as_str);
    match (method, id) {
        // Notifications, and responses to requests this server never sends: accepted, no body.
        (Some(_), None) | (None, Some(_)) if object.get("jsonrpc") == Some(&json!("2.0")) => {
            StatusCode::ACCEPTED.into_response()
        }
        (Some(method), Some(id)) if valid_id(&id) && object.get("jsonrpc") == Some(&json!("2.0")) => {
            let params = object.get("params").cloned().unwrap_or(Value::Null);
            answer(id, method, dispatch(&app, &principal, method, &params))
        }
        (_, id) => {
            rpc_error(StatusCode::BAD_REQUEST, id.unwrap_or(Value::Null), INVALID_REQUEST, "not a JSON-RPC 2.0 request")
        }
    }
}

/// DNS-rebinding defence (MCP transports: servers must validate `Origin`): a browser request
/// from another origin is refused. Also an unsupported `MCP-Protocol-Version` is a bad request.
fn refuse_headers(app: &App, headers: &HeaderMap) -> Option<Response> {
    let own_origin = app.guard.config().request_url("");
    if let Some(origin) = headers.get(header::ORIGIN)
        && origin.to_str().map_or(true, |o| !o.eq_ignore_ascii_case(own_origin.trim_end_matches('/')))
    {
        return Some((StatusCode::FORBIDDEN, "cross-origin requests are not accepted").into_response());
    }
    let version = headers.get(VERSION_HEADER).map(|v| v.to_str().unwrap_or_default());
    if version.is_some_and(|v| !SUPPORTED_VERSIONS.contains(&v)) {
        return Some((StatusCode::BAD_REQUEST, "unsupported MCP-Protocol-Version").into_response());
    }
    None
}

/// JSON-RPC ids are strings or numbers (MCP forbids null).
fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_number()
}

fn dispatch(app: &App, principal: &Principal, method: &str, params: &Value) -> Outcome {
    match method {
        "initialize" => Outcome::Result(initialize(params)),
        "ping" => Outcome::Result(json!({})),
        "tools/list" => Outcome::Result(json!({ "tools": tools() })),
        "tools/call" => call_tool(app, principal, params),
        other => Outcome::Error(METHOD_NOT_FOUND, format!("method not found: {other}")),
    }
}

fn answer(id: Value, method: &str, outcome: Outcome) -> Response {
    match outcome {
        Outcome::Result(result) => {
            let mut response = axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response();
            if method == "initialize" {
                let session = mandate_crypto::random_token("mcp-");
                if let Ok(value) = HeaderValue::from_str(&session) {
                    response.headers_mut().insert(SESSION_HEADER, value);
                }
            }
            response
        }
        Outcome::Error(code, message) => rpc_error(StatusCode::OK, id, code, &message),
        Outcome::Http(response) => response,
    }
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn initialize(params: &Value) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(DEFAULT_VERSION);
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {}},
        "serverInfo": {"name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION")},
    })
}

fn tools() -> Value {
    json!([
        {
            "name": "whoami",
            "description": "The verified caller: subject, client, scopes, actor chain and DPoP key.",
            "inputSchema": {"type": "object", "properties": {}},
        },
        {
            "name": "list_notes",
            "description": "The notes the caller saved.",
            "inputSchema": {"type": "object", "properties": {}},
        },
        {
            "name": "add_note",
            "description": format!("Save a note (needs scope {WRITE_SCOPE})."),
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": MAX_NOTE_CHARS}},
                "required": ["text"],
            },
        },
    ])
}

fn call_tool(app: &App, principal: &Principal, params: &Value) -> Outcome {
    match params.get("name").and_then(Value::as_str) {
        Some("whoami") => text_result(&whoami(principal).to_string()),
        Some("add_note") => add_note(app, principal, params.get("arguments").unwrap_or(&Value::Null)),
        Some("list_notes") => list_notes(app, principal),
        Some(other) => Outcome::Error(INVALID_PARAMS, format!("unknown tool: {other}")),
        None => Outcome::Error(INVALID_PARAMS, "params.name is required".into()),
    }
}

fn whoami(principal: &Principal) -> Value {
    json!({
        "sub": principal.subject,
        "client_id": principal.client_id,
        "scope": principal.scopes.to_string(),
        "act": principal.actor,
        "jkt": principal.jkt,
    })
}

/// Step-up: without `notes:write` the answer is the guard's 403 `insufficient_scope`
/// challenge naming every scope this call needs, so the client can re-authorize and retry.
fn add_note(app: &App, principal: &Principal, arguments: &Value) -> Outcome {
    let Ok(needed) = ScopeSet::parse(&format!("{READ_SCOPE} {WRITE_SCOPE}")) else {
        return Outcome::Error(INTERNAL_ERROR, "the server's scopes are misconfigured".into());
    };
    if let Err(rejection) = app.guard.authorize(principal, &needed) {
        return Outcome::Http(rejection.into_response());
    }
    let text = match arguments.get("text").and_then(Value::as_str) {
        Some(t) if !t.trim().is_empty() && t.chars().count() <= MAX_NOTE_CHARS => t,
        _ => return Outcome::Error(INVALID_PARAMS, format!("arguments.text must be 1 to {MAX_NOTE_CHARS} characters")),
    };
    let mut notes = app.notes.lock();
    if notes.len() >= MAX_NOTES {
        return Outcome::Result(
            json!({"content": [{"type": "text", "text": "note storage is full"}], "isError": true}),
        );
    }
    notes.push(Note { author: principal.subject.clone(), text: text.to_owned() });
    text_result(&format!("saved note {} for {}", notes.len(), principal.subject))
}

fn list_notes(app: &App, principal: &Principal) -> Outcome {
    let notes = app.notes.lock();
    let mine: Vec<&str> = notes.iter().filter(|n| n.author == principal.subject).map(|n| n.text.as_str()).collect();
    text_result(&json!(mine).to_string())
}

fn text_result(text: &str) -> Outcome {
    Outcome::Result(json!({"content": [{"type": "text", "text": text}], "isError": false}))
}
