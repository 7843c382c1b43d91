//! Revocation: single tokens (RFC 7009) and the kill switch, which raises an agent's, owner's
//! or client's "not before" epoch so everything issued to them until now is dead at once.

use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode};
use mandate_store::{EpochKind, Mutation};

use crate::introspect::{describe_token, parse_issued};
use crate::{Authz, Caller, conclude, store_failure};

/// RFC 7009: always 200 for tokens that are unknown, invalid or not the caller's (nothing is
/// revoked then, and the audit log says why); revokes the caller's own (or, for admins, any) token.
pub async fn revoke_token(authz: &Authz, caller: &Caller, token: &str, correlation_id: &str) -> Result<(), OAuthError> {
    let mut event = AuditEvent::allow("token.revoke", correlation_id);
    if let Caller::Client(client) = caller {
        event.client = Some(client.client.client_id.clone());
    }
    let mutation = match parse_issued(authz, token) {
        // RFC 7009 §2.1: a refresh token revokes its whole grant, access tokens included.
        Err(inactive) => match crate::refresh::find(authz, token).await {
            Err(e) => return conclude::<()>(authz, event, Err(e), |e| OAuthError::server_error(e.to_string())).await,
            Ok(Some(refresh)) => {
                let (described, revoke) = revoke_refresh_family(authz, caller, &refresh, event);
                event = described;
                revoke
            }
            Ok(None) => {
                event = event.refused("ignored", &format!("not a live token of this issuer: {inactive:?}"));
                None
            }
        },
        Ok(issued) => {
            describe_token(&mut event, &issued);
            let own = match caller {
                Caller::Admin => true,
                Caller::Client(c) => c.client.client_id == issued.client_id,
            };
            if own {
                Some(Mutation::RevokeToken { jti: issued.jti, expires_at_secs: issued.exp })
            } else {
                event = event.refused("ignored", "token belongs to another client");
                None
            }
        }
    };
    conclude(authz, event, Ok(((), mutation)), |e| OAuthError::server_error(e.to_string())).await
}

/// Revoking a refresh token ends its family (`RevokeBefore` on the grant), if it is the
/// caller's; another client's token is left alone, as RFC 7009 §2.1 requires.
fn revoke_refresh_family(
    authz: &Authz,
    caller: &Caller,
    refresh: &mandate_core::RefreshToken,
    event: AuditEvent,
) -> (AuditEvent, Option<Mutation>) {
    let mut event = event.with_detail(format!("refresh token of grant={}", refresh.family));
    let own = match caller {
        Caller::Admin => true,
        Caller::Client(c) => c.client.client_id == refresh.client_id,
    };
    if !own {
        return (event.refused("ignored", "refresh token belongs to another client"), None);
    }
    event.client.get_or_insert_with(|| refresh.client_id.clone());
    let not_before_secs = authz.clock.now_secs();
    (event, Some(Mutation::RevokeBefore { kind: EpochKind::Grant, name: refresh.family.clone(), not_before_secs }))
}

/// The kill switch. Refuses unknown subjects (so a typo is not mistaken for a revocation).
pub async fn revoke_subject(
    authz: &Authz,
    kind: EpochKind,
    name: &str,
    correlation_id: &str,
) -> Result<i64, OAuthError> {
    let mut event = AuditEvent::allow(format!("revoke.{}", kind.as_str()), correlation_id);
    let exists = match kind {
        EpochKind::Agent => {
            let agent = authz.store.agent(name).await.map_err(store_failure)?;
            if let Some(a) = &agent {
                event.agent = Some(a.spiffe_id.to_string());
                event.owner = Some(a.owner.to_string());
            }
            agent.is_some()
        }
        EpochKind::Owner => {
            event.owner = Some(name.to_owned());
            authz.store.owner(name).await.map_err(store_failure)?.is_some()
        }
        EpochKind::Client => {
            event.client = Some(name.to_owned());
            authz.store.client(name).await.map_err(store_failure)?.is_some()
        }
        // A grant family is an opaque id handed out with refresh tokens; revoking one that never
        // existed changes nothing a token could carry.
        EpochKind::Grant => true,
    };
    let now = authz.clock.now_secs();
    let outcome = if exists {
        event.detail = Some(format!("tokens issued at or before {now} are revoked"));
        let mutation = Mutation::RevokeBefore { kind, name: name.to_owned(), not_before_secs: now };
        Ok((now, Some(mutation)))
    } else {
        Err(OAuthError::new(OAuthErrorCode::InvalidRequest, format!("no {} named {name:?}", kind.as_str())))
    };
    conclude(authz, event, outcome, |e| OAuthError::server_error(e.to_string())).await
}
