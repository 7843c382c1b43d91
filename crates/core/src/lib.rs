//! Domain types shared by every Mandate crate: identifiers, registry records, scopes, the
//! OAuth error vocabulary, audit event fields and the injected [`Clock`].
//! Nothing here does I/O; higher crates give these types behaviour.

pub mod audit;
pub mod clock;
pub mod error;
pub mod ids;
pub mod registry;
pub mod scope;

pub use audit::{AuditEvent, Decision};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{OAuthError, OAuthErrorCode};
pub use ids::{Name, ResourceUri, SpiffeId, TrustDomain, ValidationError};
pub use registry::{
    Agent, AuthCode, Client, ClientAuthMethod, Consent, DelegationTarget, FederationRule, JoinToken, Owner,
    RefreshToken, Resource, SubjectMatch, TrustedIdp,
};
pub use scope::ScopeSet;
