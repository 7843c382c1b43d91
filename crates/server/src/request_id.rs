//! The outermost layer: every request gets a request id (the caller's `X-Request-Id` if it is
//! short and plain, else a fresh UUIDv7), written back into the request so handlers use it as
//! the audit correlation id, carried by a tracing span around the request and echoed in the
//! response. The same layer times the request for the latency histogram.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::reply::{REQUEST_ID, correlation_id, with_request_id};

/// Wraps the whole router (404s and timeouts included).
pub(crate) async fn track(State(metrics): State<Arc<Metrics>>, mut request: Request, next: Next) -> Response {
    let id = correlation_id(request.headers());
    // `correlation_id` only returns header-safe text; replacing the caller's header (which may
    // have been refused as too long or odd) makes every handler see the id this layer chose.
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(REQUEST_ID, value);
    }
    let method = request.method().clone();
    let span = tracing::info_span!("request", request_id = %id, method = %method);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let route = response.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    metrics.observe_http(&method, route, response.status(), elapsed);
    span.in_scope(|| {
        tracing::debug!(
            route = route.unwrap_or("unmatched"),
            status = response.status().as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    with_request_id(response, &id)
}

/// Runs inside routing (as a route layer), where the matched route template is known, and hands
/// it to [`track`] through the response's extensions.
pub(crate) async fn remember_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}
