//! The bridge from the Workload API to the CA ([`crate::svid`], [`crate::bundle`]): SVIDs for
//! attested agents (each issuance audited by the CA functions), bundles in Workload API
//! encodings, and the mapping of CA errors to gRPC statuses.

use mandate_core::{Agent, AuditEvent};
use serde_json::Value;
use tonic::Status;

use crate::bundle::{concat_der, jwt_bundle_bytes};
use crate::ca::{SpiffeCa, SpiffeError};
use crate::svid::{self, X509Svid};

/// The trust domain's bundles, compared to decide whether streams must send an update.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Bundles {
    /// DER CA certificates, concatenated.
    pub x509_der: Vec<u8>,
    /// A JWK Set (JSON) of the JWT-SVID keys.
    pub jwt_jwks: Vec<u8>,
}

/// The gRPC status for a CA failure: the caller's fault is `InvalidArgument`, a dependency that
/// may come back is `Unavailable` (clients retry with backoff), anything else `Internal`.
pub(crate) fn status(e: &SpiffeError) -> Status {
    match e {
        SpiffeError::AudienceRequired
        | SpiffeError::InvalidAudience(_)
        | SpiffeError::InvalidJwt(_)
        | SpiffeError::InvalidSpiffeId(_) => Status::invalid_argument(e.to_string()),
        SpiffeError::Audit(_) | SpiffeError::Store(_) | SpiffeError::Keyring(_) => {
            tracing::error!(error = %e, "workload API: CA dependency unavailable");
            Status::unavailable("the CA is unavailable; nothing was issued")
        }
        _ => {
            tracing::error!(error = %e, "workload API: issuance failed");
            Status::internal("issuance failed")
        }
    }
}

pub(crate) async fn x509_svid(ca: &SpiffeCa, agent: &Agent, correlation: &str) -> Result<X509Svid, Status> {
    svid::issue_x509(ca, agent, correlation).await.map_err(|e| status(&e))
}

pub(crate) async fn jwt_svid(
    ca: &SpiffeCa,
    agent: &Agent,
    audience: &[String],
    correlation: &str,
) -> Result<String, Status> {
    svid::issue_jwt(ca, agent, audience, correlation).await.map(|s| s.token).map_err(|e| status(&e))
}

/// The SPIFFE ID and claims of a valid JWT-SVID. A token that does not validate is refused
/// with `InvalidArgument` and the refusal is audited (without the token).
pub(crate) async fn validate_jwt(
    ca: &SpiffeCa,
    token: &str,
    audience: &str,
    correlation: &str,
) -> Result<(String, Value), Status> {
    match svid::validate_jwt(ca, token, audience) {
        Ok((spiffe_id, claims)) => Ok((spiffe_id.to_string(), claims)),
        Err(e) => {
            let mut event =
                AuditEvent::allow("svid.jwt.validate", correlation).refused("invalid_token", &e.to_string());
            event.resource = Some(audience.to_owned());
            ca.authz().log.record(event).await.map_err(|e| crate::api::state::audit_unavailable(&e))?;
            Err(status(&e))
        }
    }
}

pub(crate) async fn bundles(ca: &SpiffeCa) -> Result<Bundles, Status> {
    let authorities = ca.x509_authorities().await.map_err(|e| status(&e))?;
    Ok(Bundles { x509_der: concat_der(&authorities), jwt_jwks: jwt_bundle_bytes(ca) })
}
