//! The audit trail: events filtered by agent, owner, transaction and time range (the filter of
//! `GET /admin/api/v1/audit/events`), paged; owners see only events bound to them. Above it,
//! whether the stored log verifies up to its latest signed checkpoint.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mandate_audit::query::{QueryError, QueryParams};
use mandate_core::{AuditEvent, OAuthError};
use serde_json::Value;

use super::verify::LogStatus;
use super::{Chrome, Viewer, message, unavailable};
use crate::AppState;

/// Events per page.
const PAGE_SIZE: usize = 50;

/// The filter form's values, echoed back into it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filters {
    pub agent: String,
    pub owner: String,
    pub txn: String,
    pub since: String,
    pub until: String,
    pub from: String,
}

pub(crate) struct EventRow {
    pub seq: String,
    pub ts: String,
    pub action: String,
    pub decision: String,
    pub denied: bool,
    pub agent: String,
    pub owner: String,
    pub client: String,
    pub txn: String,
    pub detail: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/audit.html")]
struct AuditPage {
    chrome: Chrome,
    filters: Filters,
    owner_fixed: bool,
    status: LogStatus,
    events: Vec<EventRow>,
    /// The query string of the next page, when there is one.
    next: Option<String>,
}

fn parse(query: &str) -> Filters {
    let mut filters = Filters::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.trim().to_owned();
        match name.as_ref() {
            "agent" => filters.agent = value,
            "owner" => filters.owner = value,
            "txn" => filters.txn = value,
            "since" => filters.since = value,
            "until" => filters.until = value,
            "from" => filters.from = value,
            _ => {}
        }
    }
    filters
}

/// The filter form's `datetime-local` inputs send `YYYY-MM-DDTHH:MM[:SS]` without a zone: the
/// console means UTC. Full RFC 3339 times pass through.
fn as_rfc3339(value: &str) -> Option<String> {
    match value.len() {
        0 => None,
        16 => Some(format!("{value}:00Z")),
        19 if !value.ends_with('Z') => Some(format!("{value}Z")),
        _ => Some(value.to_owned()),
    }
}

fn some(value: &str) -> Option<String> {
    Some(value.to_owned()).filter(|v| !v.is_empty())
}

pub(crate) async fn page(State(state): State<AppState>, viewer: Viewer, RawQuery(query): RawQuery) -> Response {
    let mut filters = parse(query.as_deref().unwrap_or_default());
    // An owner's trail is always filtered to them; asking for someone else's is refused.
    if let Some(owner) = viewer.owner() {
        if !filters.owner.is_empty() && filters.owner != owner {
            let text = "You can only see events bound to you.";
            return message(Some(&viewer), StatusCode::FORBIDDEN, "Refused", text);
        }
        filters.owner = owner.to_owned();
    }
    let params = QueryParams {
        agent: some(&filters.agent),
        owner: some(&filters.owner),
        txn: some(&filters.txn),
        since: as_rfc3339(&filters.since),
        until: as_rfc3339(&filters.until),
        limit: Some(PAGE_SIZE.to_string()),
        from: some(&filters.from),
        ..QueryParams::default()
    };
    let mut event = AuditEvent::allow("audit.query", &viewer.correlation);
    super::describe_viewer(&mut event, &viewer.who);
    let detail = event.detail.take().map_or_else(String::new, |d| format!("{d} "));
    event.detail =
        Some(format!("{detail}console {}", query.as_deref().unwrap_or_default().chars().take(200).collect::<String>()));
    let filter = match params.into_filter(&state.authz.config.trust_domain) {
        Ok(filter) => filter,
        Err(invalid) => {
            let error =
                mandate_authz::record_refusal(&state.authz, event, OAuthError::invalid_request(invalid.to_string()));
            let error = error.await;
            return message(Some(&viewer), StatusCode::BAD_REQUEST, "Invalid filter", &error.description);
        }
    };
    let page = match filter.query(state.authz.store.as_ref()).await {
        Ok(page) => page,
        Err(QueryError::Store(e)) => return unavailable(&viewer, &super::agents::store_error(e)),
        Err(QueryError::Corrupt(seq)) => {
            let text = format!("audit entry {seq} is not valid JSON");
            return message(Some(&viewer), StatusCode::INTERNAL_SERVER_ERROR, "The audit log is unreadable", &text);
        }
    };
    if let Err(e) = state.authz.log.record(event).await {
        tracing::error!(error = %e, "audit append failed");
        return message(Some(&viewer), StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "the audit log is unavailable");
    }
    let status =
        state.console.verified.check(state.authz.store.as_ref(), &state.authz.log.signer().verifier_key()).await;
    let next = page.next.map(|from| next_query(&filters, viewer.owner().is_some(), from));
    let body = AuditPage {
        chrome: viewer.chrome(),
        owner_fixed: viewer.owner().is_some(),
        filters,
        status,
        events: page.events.iter().map(row).collect(),
        next,
    };
    super::page(body.into_response())
}

fn next_query(filters: &Filters, owner_fixed: bool, from: u64) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    let pairs = [
        ("agent", &filters.agent),
        ("owner", if owner_fixed { &String::new() } else { &filters.owner }),
        ("txn", &filters.txn),
        ("since", &filters.since),
        ("until", &filters.until),
    ];
    for (name, value) in pairs {
        if !value.is_empty() {
            query.append_pair(name, value);
        }
    }
    query.append_pair("from", &from.to_string());
    query.finish()
}

fn row(event: &Value) -> EventRow {
    let text = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    let decision = text("decision");
    let reason = text("reason");
    let detail = match (reason.is_empty(), text("detail")) {
        (true, detail) => detail,
        (false, detail) if detail.is_empty() => reason,
        (false, detail) => format!("{reason}: {detail}"),
    };
    EventRow {
        seq: event.get("seq").and_then(Value::as_u64).map(|s| s.to_string()).unwrap_or_default(),
        ts: text("ts"),
        action: text("action"),
        denied: decision != "allow",
        decision,
        agent: text("agent"),
        owner: text("owner"),
        client: text("client"),
        txn: text("txn"),
        detail,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn form_times_are_utc() {
        assert_eq!(as_rfc3339("2026-11-23T09:30").as_deref(), Some("2026-11-23T09:30:00Z"));
        assert_eq!(as_rfc3339("2026-11-23T09:30:15").as_deref(), Some("2026-11-23T09:30:15Z"));
        assert_eq!(as_rfc3339("2026-11-23T09:30:15+01:00").as_deref(), Some("2026-11-23T09:30:15+01:00"));
        assert_eq!(as_rfc3339(""), None);
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        let filters = Filters { agent: "bot".into(), owner: "alice".into(), ..Filters::default() };
        assert_eq!(next_query(&filters, false, 51), "agent=bot&owner=alice&from=51");
        assert_eq!(next_query(&filters, true, 51), "agent=bot&from=51");
    }
}
