//! Prometheus metrics at `/metrics` (OpenMetrics text): token outcomes by grant type and refusal
//! reason, HTTP latency by route, the audit writer's queue depth and revocations. Revocations are
//! counted from the audit log itself, so those made by `mandate revoke` or another replica count
//! as well as the ones this process made. Label values come from fixed sets, never from input.

use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_authz::Authz;
use mandate_core::OAuthErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::AppState;

/// The media type of the OpenMetrics text format, which Prometheus scrapes natively.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Most audit entries one scrape reads while counting revocations; a scrape after a long pause
/// catches up over several scrapes instead of reading the whole backlog at once.
const MAX_TAIL_PER_SCRAPE: u64 = 20_000;
/// Entries per store read while tailing.
const TAIL_PAGE: u64 = 1_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabels {
    grant_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    grant_type: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevocationLabels {
    kind: &'static str,
}

/// The process's metrics and their registry; shared by every request through [`AppState`].
pub struct Metrics {
    registry: Registry,
    tokens_issued: Family<GrantLabels, Counter>,
    tokens_refused: Family<RefusalLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram>,
    audit_queue_depth: Gauge,
    audit_entries: Gauge,
    revocations: Family<RevocationLabels, Counter>,
    /// The next audit `seq` the revocation count has not looked at. A scrape that finds it
    /// locked (another scrape is tailing) skips the tail rather than queueing behind it.
    revocation_cursor: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s: from a cached-key token issuance to a request that hits the 30 s timeout.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// Metrics for a server whose audit log holds `audit_len` entries now: revocations are
    /// counted from there on (a counter starts at zero with its process, as Prometheus expects).
    pub fn new(audit_len: u64) -> Self {
        let mut registry = Registry::default();
        let tokens_issued = Family::<GrantLabels, Counter>::default();
        registry.register(
            "mandate_tokens_issued",
            "Tokens issued at /oauth2/token, by grant type",
            tokens_issued.clone(),
        );
        let tokens_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "mandate_tokens_refused",
            "Token requests refused at /oauth2/token, by grant type and OAuth error code",
            tokens_refused.clone(),
        );
        let http_duration =
            Family::<HttpLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "mandate_http_request_duration_seconds",
            "HTTP request latency by method, route template and status",
            http_duration.clone(),
        );
        let audit_queue_depth = Gauge::default();
        registry.register(
            "mandate_audit_queue_depth",
            "Audit appends waiting for the writer (group commit queue)",
            audit_queue_depth.clone(),
        );
        let audit_entries = Gauge::default();
        registry.register("mandate_audit_entries", "Entries in the audit log", audit_entries.clone());
        let revocations = Family::<RevocationLabels, Counter>::default();
        registry.register(
            "mandate_revocations",
            "Revocations recorded in the audit log since this process started, by kind",
            revocations.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        registry.register("mandate_build_info", "The running Mandate version", build);
        Self {
            registry,
            tokens_issued,
            tokens_refused,
            http_duration,
            audit_queue_depth,
            audit_entries,
            revocations,
            revocation_cursor: tokio::sync::Mutex::new(audit_len),
        }
    }

    /// Counts one answer of the token endpoint. `grant_type` is the request's parameter as sent;
    /// values outside the known grants are counted as `other`, so input cannot add label values.
    pub(crate) fn token_outcome(&self, grant_type: Option<&str>, outcome: Result<(), OAuthErrorCode>) {
        let grant_type = grant_label(grant_type);
        match outcome {
            Ok(()) => self.tokens_issued.get_or_create(&GrantLabels { grant_type }).inc(),
            Err(code) => self.tokens_refused.get_or_create(&RefusalLabels { grant_type, reason: code.as_str() }).inc(),
        };
    }

    /// Records one HTTP exchange. `route` is the matched route template (`/admin/api/v1/agents/{name}`),
    /// not the path, so ids in paths do not become label values.
    pub(crate) fn observe_http(&self, method: &Method, route: Option<&str>, status: StatusCode, elapsed: Duration) {
        let labels = HttpLabels {
            method: method_label(method),
            route: route.unwrap_or("unmatched").to_owned(),
            status: status.as_u16(),
        };
        self.http_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Brings the gauges and the revocation count up to date. Store trouble is logged and
    /// leaves the previous values: a scrape still answers with everything else.
    async fn refresh(&self, authz: &Authz) {
        self.audit_queue_depth.set(i64::try_from(authz.log.queue_depth()).unwrap_or(i64::MAX));
        let len = match authz.store.audit_len().await {
            Ok(len) => len,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading the audit log length failed");
                return;
            }
        };
        self.audit_entries.set(i64::try_from(len).unwrap_or(i64::MAX));
        let Ok(mut cursor) = self.revocation_cursor.try_lock() else {
            return;
        };
        let end = len.min(cursor.saturating_add(MAX_TAIL_PER_SCRAPE));
        while *cursor < end {
            let page_end = end.min(*cursor + TAIL_PAGE);
            let entries = match authz.store.audit_entries(*cursor, page_end).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: reading audit entries failed");
                    return;
                }
            };
            for entry in &entries {
                if let Some(kind) = revocation_kind(&entry.canonical) {
                    self.revocations.get_or_create(&RevocationLabels { kind }).inc();
                }
            }
            // Entries are contiguous; a short page (a gap) must not stall the tail forever.
            *cursor = page_end;
        }
    }

    /// The registry in the OpenMetrics text format.
    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// `GET /metrics`: unauthenticated, like most Prometheus targets; it names no client, agent or
/// owner, only grant types, error codes, route templates and counts.
pub(crate) async fn serve(State(state): State<AppState>) -> Response {
    state.metrics.refresh(&state.authz).await;
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn grant_label(grant_type: Option<&str>) -> &'static str {
    match grant_type {
        None => "none",
        Some(given) => {
            mandate_authz::registry::KNOWN_GRANTS.iter().find(|known| **known == given).copied().unwrap_or("other")
        }
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The two fields of a canonical audit entry the revocation count needs.
#[derive(Deserialize)]
struct EntryHead {
    action: String,
    decision: String,
}

/// The kind of revocation an audit entry records, if it records one that took effect: the kill
/// switch and its kin (`revoke.agent|owner|client|grant`) and RFC 7009 (`token.revoke`).
fn revocation_kind(canonical: &str) -> Option<&'static str> {
    let head: EntryHead = serde_json::from_str(canonical).ok()?;
    if head.decision != "allow" {
        return None;
    }
    match head.action.as_str() {
        "token.revoke" => Some("token"),
        "revoke.agent" => Some("agent"),
        "revoke.owner" => Some("owner"),
        "revoke.client" => Some("client"),
        "revoke.grant" => Some("grant"),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn token_outcomes_are_counted_by_known_grant_and_reason() {
        let metrics = Metrics::new(0);
        metrics.token_outcome(Some("client_credentials"), Ok(()));
        metrics.token_outcome(Some("client_credentials"), Ok(()));
        metrics.token_outcome(Some("client_credentials"), Err(OAuthErrorCode::InvalidClient));
        metrics.token_outcome(Some("made-up\"grant"), Err(OAuthErrorCode::UnsupportedGrantType));
        metrics.token_outcome(None, Err(OAuthErrorCode::InvalidRequest));
        let text = metrics.encode().unwrap();
        assert!(text.contains("mandate_tokens_issued_total{grant_type=\"client_credentials\"} 2\n"), "{text}");
        assert!(
            text.contains(
                "mandate_tokens_refused_total{grant_type=\"client_credentials\",reason=\"invalid_client\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("{grant_type=\"other\",reason=\"unsupported_grant_type\"} 1\n"), "{text}");
        assert!(text.contains("{grant_type=\"none\",reason=\"invalid_request\"} 1\n"), "{text}");
        assert!(!text.contains("made-up"), "input never becomes a label value");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn latency_is_a_histogram_by_route_template() {
        let metrics = Metrics::new(0);
        let route = Some("/admin/api/v1/agents/{name}");
        metrics.observe_http(&Method::GET, route, StatusCode::OK, Duration::from_millis(3));
        metrics.observe_http(&Method::from_bytes(b"BREW").unwrap(), None, StatusCode::NOT_FOUND, Duration::ZERO);
        let text = metrics.encode().unwrap();
        let labels = "method=\"GET\",route=\"/admin/api/v1/agents/{name}\",status=\"200\"";
        assert!(text.contains(&format!("mandate_http_request_duration_seconds_count{{{labels}}} 1")), "{text}");
        assert!(
            text.contains(&format!("mandate_http_request_duration_seconds_bucket{{le=\"0.004\",{labels}}} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!("mandate_http_request_duration_seconds_bucket{{le=\"0.002\",{labels}}} 0")),
            "{text}"
        );
        assert!(text.contains("method=\"other\",route=\"unmatched\",status=\"404\""), "{text}");
    }

    #[test]
    fn only_revocations_that_took_effect_are_counted() {
        let entry =
            |action: &str, decision: &str| format!(r#"{{"action":"{action}","decision":"{decision}","seq":1}}"#);
        assert_eq!(revocation_kind(&entry("revoke.agent", "allow")), Some("agent"));
        assert_eq!(revocation_kind(&entry("revoke.grant", "allow")), Some("grant"));
        assert_eq!(revocation_kind(&entry("token.revoke", "allow")), Some("token"));
        assert_eq!(revocation_kind(&entry("revoke.agent", "deny")), None);
        assert_eq!(revocation_kind(&entry("revoke", "allow")), None, "a refused kill-switch request");
        assert_eq!(revocation_kind(&entry("token.issue", "allow")), None);
        assert_eq!(revocation_kind("not json"), None);
    }
}
