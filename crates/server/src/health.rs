//! Health endpoints for orchestrators: `/healthz` (liveness: the process answers HTTP) and
//! `/readyz` (readiness: the store answers a read and the audit writer is running, so requests
//! that must be audited can succeed). Neither needs credentials nor reveals error details.

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;

/// A store that has not answered by then counts as down: a hung database must make the
/// instance unready, not hang the probe.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 while the process serves HTTP.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when ready, 503 with the failing checks otherwise.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.authz.store.clone();
    let probe = async move { store.audit_len().await.map(drop).map_err(|e| e.to_string()) };
    readiness(probe, state.authz.log.is_running()).await
}

/// The readiness answer from a store probe and the writer's state.
async fn readiness(store_probe: impl Future<Output = Result<(), String>>, audit_writer_running: bool) -> Response {
    let store_ok = match tokio::time::timeout(STORE_PROBE_TIMEOUT, store_probe).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: the store did not answer in time");
            false
        }
    };
    if !audit_writer_running {
        tracing::warn!("readiness: the audit writer has stopped");
    }
    let ready = store_ok && audit_writer_running;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let check = |ok: bool| if ok { "ok" } else { "failing" };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "checks": { "store": check(store_ok), "audit_writer": check(audit_writer_running) },
    });
    (status, Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::*;

    async fn answer(response: Response) -> (StatusCode, Value) {
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn ready_when_store_and_writer_are_up() {
        let (status, body) = answer(readiness(async { Ok(()) }, true).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");
    }

    #[tokio::test]
    async fn a_failing_store_makes_the_instance_unready_without_leaking_the_error() {
        let (status, body) = answer(readiness(async { Err("password=hunter2 refused".to_owned()) }, true).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["store"], "failing");
        assert_eq!(body["checks"]["audit_writer"], "ok");
        assert!(!body.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn a_stopped_audit_writer_makes_the_instance_unready() {
        let (status, body) = answer(readiness(async { Ok(()) }, false).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["audit_writer"], "failing");
    }

    #[tokio::test]
    async fn a_hung_store_makes_the_instance_unready() {
        let (status, body) = answer(readiness(std::future::pending(), true).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["store"], "failing");
    }
}
