//! Admin API audit queries (`GET /admin/api/v1/audit/events`): the filter `mandate audit query`
//! uses, over HTTP, bounded by `limit` and paged with `from`. Each query is itself audited
//! (`audit.query`), and so is each refused one.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use mandate_audit::query::{InvalidQuery, QueryError, QueryParams};
use mandate_authz::record_refusal;
use mandate_core::{AuditEvent, OAuthError};
use serde_json::json;

use crate::AppState;
use crate::admin::{Admin, ApiError, ApiResult, error};

/// Events per answer when the request gives no `limit`.
const DEFAULT_LIMIT: usize = 100;
/// Longest query string recorded in the `audit.query` event's detail.
const MAX_DETAIL: usize = 256;

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new().route("/audit/events", get(events))
}

async fn events(admin: Admin, State(s): State<AppState>, RawQuery(query): RawQuery) -> ApiResult {
    let query = query.unwrap_or_default();
    let event = AuditEvent::allow("audit.query", &admin.correlation).with_detail(truncate(&query));
    let filter = match parse_params(&query).and_then(|params| params.into_filter(&s.authz.config.trust_domain)) {
        Ok(filter) => filter,
        Err(invalid) => {
            record_refusal(&s.authz, event, OAuthError::invalid_request(invalid.to_string())).await;
            return Err(error(StatusCode::BAD_REQUEST, "invalid_request", &invalid.to_string()));
        }
    };
    let filter = filter.with_default_limit(DEFAULT_LIMIT);
    let page = filter.query(s.authz.store.as_ref()).await.map_err(query_error)?;
    s.authz.log.record(event).await.map_err(|e| {
        tracing::error!(error = %e, "audit append failed");
        error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "the audit log is unavailable")
    })?;
    Ok(Json(json!({ "events": page.events, "next": page.next })).into_response())
}

/// The query string as [`QueryParams`]; unknown and repeated parameters are errors, not ignored,
/// so a misspelt filter cannot silently widen the answer.
fn parse_params(query: &str) -> Result<QueryParams, InvalidQuery> {
    let mut params = QueryParams::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        let (param, slot) = match name.as_ref() {
            "agent" => ("agent", &mut params.agent),
            "owner" => ("owner", &mut params.owner),
            "jti" => ("jti", &mut params.jti),
            "client" => ("client", &mut params.client),
            "txn" => ("txn", &mut params.txn),
            "action" => ("action", &mut params.action),
            "since" => ("since", &mut params.since),
            "until" => ("until", &mut params.until),
            "limit" => ("limit", &mut params.limit),
            "from" => ("from", &mut params.from),
            _ => return Err(InvalidQuery { param: "name", why: format!("unknown parameter {name:?}") }),
        };
        if slot.replace(value).is_some() {
            return Err(InvalidQuery { param, why: "given more than once".to_owned() });
        }
    }
    Ok(params)
}

fn truncate(query: &str) -> String {
    let end = (0..=query.len().min(MAX_DETAIL)).rev().find(|i| query.is_char_boundary(*i)).unwrap_or(0);
    query[..end].to_owned()
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Store(e) => crate::admin::store_error(e),
        QueryError::Corrupt(seq) => {
            tracing::error!(seq, "audit entry is not valid JSON");
            error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the audit log is unreadable")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_decoded_and_strict() {
        let params =
            parse_params("agent=bot&owner=alice%40example.com&since=2026-11-23T09%3A00%3A00Z&limit=5").unwrap();
        assert_eq!(params.agent.as_deref(), Some("bot"));
        assert_eq!(params.owner.as_deref(), Some("alice@example.com"));
        assert_eq!(params.since.as_deref(), Some("2026-11-23T09:00:00Z"));
        assert_eq!(params.limit.as_deref(), Some("5"));
        assert!(parse_params("agnet=bot").unwrap_err().why.contains("agnet"));
        assert_eq!(parse_params("jti=a&jti=b").unwrap_err().param, "jti");
        assert!(parse_params("").is_ok());
    }

    #[test]
    fn detail_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(200);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_DETAIL && long.starts_with(&cut));
    }
}
