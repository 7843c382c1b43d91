//! The guard as axum middleware: `from_fn_with_state(Required::new(guard, "read")?, require_scopes)`
//! in front of a route verifies the token, refuses with a challenge, or hands the handler the
//! [`Principal`](crate::Principal) as a request extension.

use std::sync::Arc;

use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mandate_core::{ScopeSet, ValidationError};

use crate::challenge::{Rejection, RejectionKind};
use crate::verify::{Guard, Presented};

/// A guard and the scopes one route needs.
#[derive(Clone)]
pub struct Required {
    guard: Arc<Guard>,
    scopes: ScopeSet,
}

impl Required {
    pub fn new(guard: Arc<Guard>, scopes: &str) -> Result<Self, ValidationError> {
        Ok(Self { guard, scopes: ScopeSet::parse(scopes)? })
    }
}

/// Middleware body; see the module docs.
pub async fn require_scopes(State(required): State<Required>, mut request: Request, next: Next) -> Response {
    if let Err(rejection) = required.guard.refuse_ambiguous(request.headers(), request.uri()) {
        return rejection.into_response();
    }
    let seen = presented(&request);
    match required.guard.check(&seen, &required.scopes).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// What the guard judges of a request. The path is the one the client addressed: under a
/// nested router `uri()` has lost its prefix, [`OriginalUri`] has not.
fn presented(request: &Request) -> Presented<'_> {
    let headers = request.headers();
    // A value that is not visible ASCII is kept (as empty) so it still counts, and fails, as a proof.
    let dpop = headers.get_all("dpop").iter().map(|v| v.to_str().unwrap_or_default()).collect();
    let path = request.extensions().get::<OriginalUri>().map_or(request.uri().path(), |original| original.path());
    Presented {
        authorization: headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        dpop,
        method: request.method().as_str(),
        path,
    }
}

impl Guard {
    /// Two `Authorization` headers, or a token in the query string (forbidden by OAuth 2.1), make
    /// the request malformed rather than merely unauthenticated.
    pub fn refuse_ambiguous(&self, headers: &HeaderMap, uri: &Uri) -> Result<(), Rejection> {
        let repeated = headers.get_all(header::AUTHORIZATION).iter().count() > 1;
        let in_query =
            uri.query().is_some_and(|q| q.split('&').any(|pair| pair.split('=').next() == Some("access_token")));
        if !repeated && !in_query {
            return Ok(());
        }
        let description =
            if repeated { "more than one Authorization header" } else { "tokens are not accepted in the query" };
        Err(self.rejection(RejectionKind::InvalidRequest, description, &ScopeSet::default()))
    }
}
