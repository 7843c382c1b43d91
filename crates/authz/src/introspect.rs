//! Token state: whether an access token Mandate issued is still live (signature, expiry,
//! per-token revocation, and the agent/owner/client "not before" epochs), and RFC 7662
//! introspection on top of it.

use std::sync::Arc;

use mandate_core::{AuditEvent, OAuthError};
use mandate_crypto::{VerifyOptions, verify_jwt};
use mandate_guard::{GRANT_CLAIM, StoreRevocation, TokenFacts};
use serde_json::{Map, Value, json};

use crate::token::{ACCESS_TOKEN_TYP, OWNER_CLAIM};
use crate::{Authz, Caller, conclude, store_failure};

/// A signature-checked, unexpired access token of ours, with the fields revocation needs.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub claims: Value,
    pub jti: String,
    pub client_id: String,
    pub agent: Option<String>,
    pub owner: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

/// Why a token is not active. Introspection answers only `active: false`; the audit log keeps why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inactive {
    Invalid(String),
    Revoked(&'static str),
}

impl Inactive {
    fn describe(&self) -> String {
        match self {
            Self::Invalid(why) => format!("invalid: {why}"),
            Self::Revoked(why) => (*why).to_owned(),
        }
    }
}

/// Checks signature, type, issuer and expiry; does not consult revocation state.
pub fn parse_issued(authz: &Authz, token: &str) -> Result<IssuedToken, Inactive> {
    let keys = authz.keys.published();
    let opts = VerifyOptions {
        typ: &[ACCESS_TOKEN_TYP],
        typ_optional: false,
        issuer: Some(&authz.config.issuer),
        audience: &[],
        now: authz.clock.now_secs(),
        leeway_secs: 0,
    };
    let claims = verify_jwt(token, &keys, &opts).map_err(|e| Inactive::Invalid(e.to_string()))?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    let missing = |name: &str| Inactive::Invalid(format!("claim {name:?} is missing"));
    let agents = revocation(authz);
    Ok(IssuedToken {
        jti: text("jti").ok_or_else(|| missing("jti"))?,
        client_id: text("client_id").ok_or_else(|| missing("client_id"))?,
        agent: text("sub").and_then(|s| agents.agent_name(&s).map(str::to_owned)),
        owner: text(OWNER_CLAIM),
        iat: number("iat").ok_or_else(|| missing("iat"))?,
        exp: number("exp").ok_or_else(|| missing("exp"))?,
        claims,
    })
}

/// The outcome of [`check_active`]: a live token, or why not (with the token when it parsed).
#[derive(Debug, Clone)]
pub enum Liveness {
    Active(IssuedToken),
    Inactive(Option<Box<IssuedToken>>, Inactive),
}

/// The full liveness check: [`parse_issued`] plus revocation state.
pub async fn check_active(authz: &Authz, token: &str) -> Result<Liveness, OAuthError> {
    let issued = match parse_issued(authz, token) {
        Ok(t) => t,
        Err(inactive) => return Ok(Liveness::Inactive(None, inactive)),
    };
    let facts = TokenFacts {
        jti: &issued.jti,
        iat: issued.iat,
        client_id: &issued.client_id,
        agent: issued.agent.as_deref(),
        owner: issued.owner.as_deref(),
        grant: issued.claims.get(GRANT_CLAIM).and_then(Value::as_str),
        act: issued.claims.get("act"),
    };
    let revoked =
        revocation(authz).check(&facts).await.map_err(|e| store_failure(mandate_store::StoreError::Database(e)))?;
    match revoked {
        Some(reason) => Ok(Liveness::Inactive(Some(Box::new(issued)), Inactive::Revoked(reason))),
        None => Ok(Liveness::Active(issued)),
    }
}

/// Revocation state as the guard reads it, so the AS and co-located resource servers agree.
fn revocation(authz: &Authz) -> StoreRevocation {
    StoreRevocation::new(Arc::clone(&authz.store), authz.config.trust_domain.as_str())
}

/// RFC 7662: `{"active": false}` for anything not live or not visible to the caller.
pub async fn introspect(
    authz: &Authz,
    caller: &Caller,
    token: &str,
    correlation_id: &str,
) -> Result<Value, OAuthError> {
    let mut event = AuditEvent::allow("token.introspect", correlation_id);
    if let Caller::Client(client) = caller {
        event.client = Some(client.client.client_id.clone());
    }
    let outcome = match check_active(authz, token).await {
        Err(e) => Err(e),
        Ok(Liveness::Inactive(issued, why)) => {
            if let Some(issued) = &issued {
                describe_token(&mut event, issued);
            }
            event = event.refused("inactive", &why.describe());
            Ok((json!({"active": false}), None))
        }
        Ok(Liveness::Active(issued)) => {
            describe_token(&mut event, &issued);
            if may_see(caller, &issued) {
                Ok((active_response(&issued), None))
            } else {
                event = event.refused("inactive", "token belongs to another client");
                Ok((json!({"active": false}), None))
            }
        }
    };
    conclude(authz, event, outcome, |e| OAuthError::server_error(e.to_string())).await
}

pub(crate) fn describe_token(event: &mut AuditEvent, issued: &IssuedToken) {
    event.jti = Some(issued.jti.clone());
    event.owner = issued.owner.clone();
    event.agent = issued.claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    event.resource = issued.claims.get("aud").and_then(Value::as_str).map(str::to_owned);
    event.scope = issued.claims.get("scope").and_then(Value::as_str).map(str::to_owned);
    if event.client.is_none() {
        event.client = Some(issued.client_id.clone());
    }
}

/// Admins and resource-server clients see every token; other clients only their own.
fn may_see(caller: &Caller, issued: &IssuedToken) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Client(c) => c.client.can_introspect || c.client.client_id == issued.client_id,
    }
}

fn active_response(issued: &IssuedToken) -> Value {
    let mut out = Map::new();
    out.insert("active".into(), Value::Bool(true));
    // RFC 9449 §6.2: a bound token is introspected with its `cnf` and as a DPoP token.
    let bound = issued.claims.pointer("/cnf/jkt").is_some();
    out.insert("token_type".into(), Value::String(if bound { "DPoP" } else { "Bearer" }.into()));
    let (federated, idp) = (crate::federation::FEDERATED_CLAIM, crate::idjag::IDP_CLAIM);
    let names = ["scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti", "act", "cnf", OWNER_CLAIM];
    for name in names.into_iter().chain([federated, idp, GRANT_CLAIM]) {
        if let Some(v) = issued.claims.get(name) {
            out.insert(name.into(), v.clone());
        }
    }
    Value::Object(out)
}
