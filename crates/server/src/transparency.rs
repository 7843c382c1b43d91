//! The audit log as a public, read-only transparency log: the latest signed checkpoint, entries,
//! and RFC 9162 inclusion and consistency proofs against signed tree heads. No authentication:
//! events hold no secrets, and anyone may check the log. Hashes are lowercase hex.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mandate_audit::proof::{self, ProofError};
use mandate_store::Store;
use serde_json::json;

use crate::AppState;

/// Most entries one `/audit/entries` call returns.
pub const MAX_ENTRIES: u64 = 1000;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/audit/checkpoint", get(checkpoint))
        .route("/audit/entries", get(entries))
        .route("/audit/proof/inclusion", get(inclusion))
        .route("/audit/proof/consistency", get(consistency))
}

/// A refused or failed transparency request, answered as a JSON error.
#[derive(Debug)]
enum Refusal {
    BadRequest(String),
    NotFound(&'static str),
    Internal,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, error, description) = match self {
            Self::BadRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", d),
            Self::NotFound(d) => (StatusCode::NOT_FOUND, "not_found", d.to_owned()),
            Self::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the audit log is unavailable".into())
            }
        };
        (status, Json(json!({"error": error, "error_description": description}))).into_response()
    }
}

impl From<mandate_store::StoreError> for Refusal {
    fn from(e: mandate_store::StoreError) -> Self {
        tracing::error!(error = %e, "reading the audit log failed");
        Self::Internal
    }
}

impl From<ProofError> for Refusal {
    fn from(e: ProofError) -> Self {
        match e {
            ProofError::OutOfRange(message) => Self::BadRequest(message),
            ProofError::Store(e) => e.into(),
        }
    }
}

/// `GET /audit/checkpoint`: the latest signed note, as C2SP checkpoint bytes.
async fn checkpoint(State(state): State<AppState>) -> Result<Response, Refusal> {
    let latest = state.authz.store.latest_checkpoint().await?;
    let cp = latest.ok_or(Refusal::NotFound("no checkpoint has been signed yet"))?;
    let mut response = cp.note.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `GET /audit/entries?start=&end=`: entries `start <= index < end` (at most 1000; `end`
/// defaults to as many as allowed), each with its canonical JSON text and leaf hash.
async fn entries(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, Refusal> {
    let params = Params::parse(query.as_deref(), &["start", "end"])?;
    let store = state.authz.store.as_ref();
    let size = signed_size(store).await?;
    let (start, end) = entry_range(params.required("start")?, params.optional("end"), size)?;
    let rows = store.audit_entries(start, end).await?;
    if rows.len() as u64 != end - start {
        return Err(mandate_store::StoreError::AuditChain(format!("entries {start}..{end} are not all present")).into());
    }
    let entries: Vec<_> = rows
        .iter()
        .map(|e| json!({"index": e.seq, "leaf_hash": hex::encode(e.leaf_hash), "entry": e.canonical}))
        .collect();
    Ok(Json(json!({"tree_size": size, "start": start, "end": end, "entries": entries})).into_response())
}

/// `GET /audit/proof/inclusion?index=&size=`: the audit path of entry `index` in the tree of
/// `size` entries (default: the latest checkpoint's).
async fn inclusion(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, Refusal> {
    let params = Params::parse(query.as_deref(), &["index", "size"])?;
    let store = state.authz.store.as_ref();
    let signed = signed_size(store).await?;
    let index = params.required("index")?;
    let size = within_signed(params.optional("size").unwrap_or(signed), signed)?;
    let p = proof::inclusion_proof(store, index, size).await?;
    let root = proof::root_at(store, size).await?;
    Ok(Json(json!({
        "index": p.index,
        "tree_size": p.tree_size,
        "leaf_hash": hex::encode(p.leaf_hash),
        "root_hash": hex::encode(root),
        "hashes": p.hashes.iter().map(hex::encode).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /audit/proof/consistency?from=&to=`: proof that the tree of `from` entries is a prefix
/// of the tree of `to` entries (default: the latest checkpoint's size).
async fn consistency(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, Refusal> {
    let params = Params::parse(query.as_deref(), &["from", "to"])?;
    let store = state.authz.store.as_ref();
    let signed = signed_size(store).await?;
    let from = params.required("from")?;
    let to = within_signed(params.optional("to").unwrap_or(signed), signed)?;
    let p = proof::consistency_proof(store, from, to).await?;
    Ok(Json(json!({
        "from": p.from,
        "to": p.to,
        "hashes": p.hashes.iter().map(hex::encode).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// Size of the latest signed checkpoint: nothing beyond it is served, so every proof is
/// against a tree head the log has committed to.
async fn signed_size(store: &dyn Store) -> Result<u64, Refusal> {
    Ok(store.latest_checkpoint().await?.map_or(0, |cp| cp.tree_size))
}

/// `start..end` checked against the signed size; `end` defaults to a full page.
fn entry_range(start: u64, end: Option<u64>, size: u64) -> Result<(u64, u64), Refusal> {
    let end = end.unwrap_or_else(|| start.saturating_add(MAX_ENTRIES).min(size));
    if start > end || end > size {
        return Err(Refusal::BadRequest(format!("need start <= end <= {size} (the latest checkpoint's size)")));
    }
    if end - start > MAX_ENTRIES {
        return Err(Refusal::BadRequest(format!("at most {MAX_ENTRIES} entries per request")));
    }
    Ok((start, end))
}

fn within_signed(size: u64, signed: u64) -> Result<u64, Refusal> {
    if size > signed {
        return Err(Refusal::BadRequest(format!("size {size} exceeds the latest checkpoint's size {signed}")));
    }
    Ok(size)
}

/// Query parameters: each known one at most once, decimal, no unknown names.
struct Params(Vec<(String, u64)>);

impl Params {
    fn parse(query: Option<&str>, known: &[&str]) -> Result<Self, Refusal> {
        let mut params: Vec<(String, u64)> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !known.contains(&name.as_ref()) {
                return Err(Refusal::BadRequest(format!("unknown parameter {name:?}")));
            }
            if params.iter().any(|(n, _)| *n == name) {
                return Err(Refusal::BadRequest(format!("parameter {name} is repeated")));
            }
            let number = parse_decimal(&value)
                .ok_or_else(|| Refusal::BadRequest(format!("parameter {name} must be a non-negative integer")))?;
            params.push((name.into_owned(), number));
        }
        Ok(Self(params))
    }

    fn optional(&self, name: &str) -> Option<u64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    fn required(&self, name: &str) -> Result<u64, Refusal> {
        self.optional(name).ok_or_else(|| Refusal::BadRequest(format!("parameter {name} is required")))
    }
}

/// Plain ASCII digits only (`u64::from_str` would also take a leading `+`).
fn parse_decimal(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_strict() {
        assert!(Params::parse(Some("index=3&size=10"), &["index", "size"]).is_ok());
        for bad in
            ["index=-1", "index=+1", "index=", "index=0x10", "index=1&index=2", "other=1", "index=99999999999999999999"]
        {
            assert!(Params::parse(Some(bad), &["index", "size"]).is_err(), "{bad}");
        }
        let params = Params::parse(None, &["index"]).map_err(|_| ()).and_then(|p| p.required("index").map_err(|_| ()));
        assert!(params.is_err());
    }

    #[test]
    fn entry_pages_are_bounded() {
        assert!(matches!(entry_range(0, None, 5000), Ok((0, 1000))));
        assert!(matches!(entry_range(4500, None, 5000), Ok((4500, 5000))));
        assert!(matches!(entry_range(10, Some(1010), 5000), Ok((10, 1010))));
        assert!(entry_range(10, Some(1011), 5000).is_err());
        assert!(entry_range(11, Some(10), 5000).is_err());
        assert!(entry_range(0, Some(5001), 5000).is_err());
        assert!(entry_range(5001, None, 5000).is_err());
    }

    #[test]
    fn sizes_beyond_the_signed_head_are_refused() {
        assert!(within_signed(5, 5).is_ok());
        assert!(within_signed(6, 5).is_err());
    }
}
