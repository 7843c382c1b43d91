//! The fields of one audit event before the log assigns its position (`seq`, `prev`, `ts`).
//! The on-disk and export format is specified in `docs/audit.md`.

use serde::{Deserialize, Serialize};

use crate::error::OAuthError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// What happened, to whom, on whose behalf. Never holds a secret or a raw token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub action: String,
    pub decision: Decision,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub agent: Option<String>,
    pub owner: Option<String>,
    /// The principal acted for, or the external subject of a federated token.
    pub subject: Option<String>,
    pub client: Option<String>,
    pub resource: Option<String>,
    pub scope: Option<String>,
    pub jti: Option<String>,
    /// The transaction id (`txn` of a Txn-Token) every hop of one call chain shares.
    pub txn: Option<String>,
    pub correlation_id: String,
}

impl AuditEvent {
    pub fn allow(action: impl Into<String>, correlation_id: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            decision: Decision::Allow,
            reason: None,
            detail: None,
            agent: None,
            owner: None,
            subject: None,
            client: None,
            resource: None,
            scope: None,
            jti: None,
            txn: None,
            correlation_id: correlation_id.into(),
        }
    }

    pub fn deny(action: impl Into<String>, correlation_id: impl Into<String>, error: &OAuthError) -> Self {
        Self::allow(action, correlation_id).refused(error.code.as_str(), &error.description)
    }

    /// The same event, turned into a refusal with the given reason.
    pub fn refused(mut self, reason: &str, detail: &str) -> Self {
        self.decision = Decision::Deny;
        self.reason = Some(reason.to_owned());
        self.detail = Some(detail.to_owned());
        self
    }

    pub fn with_correlation(mut self, correlation_id: &str) -> Self {
        self.correlation_id = correlation_id.to_owned();
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}
