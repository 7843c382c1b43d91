//! Revocation: single tokens (RFC 7009) and the kill switch, which raises an agent's, owner's
//! or client's "not before" epoch so everything issued to them until now is dead at once.

use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode};
use mandate_store::{EpochKind, Mutation};

use crate::introspect::{describe_token, parse_issued};
use crate::ssf::{Signal, SignalSubject, with_signals};
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
                match revoke {
                    None => None,
                    Some(revoke) => {
                        let at = authz.clock.now_secs();
                        let why = "refresh token revoked (RFC 7009)";
                        let signal = Signal::session_revoked(
                            SignalSubject::Grant(&refresh.family),
                            at,
                            initiator(caller),
                            why,
                            correlation_id,
                        );
                        match with_signals(authz, revoke, &[signal]).await {
                            Ok(mutation) => Some(mutation),
                            Err(e) => {
                                return conclude::<()>(authz, event, Err(e), |e| {
                                    OAuthError::server_error(e.to_string())
                                })
                                .await;
                            }
                        }
                    }
                }
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
                let signal = Signal::session_revoked(
                    SignalSubject::Token(&issued.jti),
                    authz.clock.now_secs(),
                    initiator(caller),
                    "token revoked (RFC 7009)",
                    correlation_id,
                );
                let revoke = Mutation::RevokeToken { jti: issued.jti.clone(), expires_at_secs: issued.exp };
                match with_signals(authz, revoke, &[signal]).await {
                    Ok(mutation) => Some(mutation),
                    Err(e) => {
                        return conclude::<()>(authz, event, Err(e), |e| OAuthError::server_error(e.to_string())).await;
                    }
                }
            } else {
                event = event.refused("ignored", "token belongs to another client");
                None
            }
        }
    };
    conclude(authz, event, Ok(((), mutation)), |e| OAuthError::server_error(e.to_string())).await
}

/// CAEP `initiating_entity`: an administrator, or the client itself acting for its user.
fn initiator(caller: &Caller) -> &'static str {
    match caller {
        Caller::Admin => "admin",
        Caller::Client(_) => "user",
    }
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
    let mut spiffe_id = String::new();
    let exists = match kind {
        EpochKind::Agent => {
            let agent = authz.store.agent(name).await.map_err(store_failure)?;
            if let Some(a) = &agent {
                spiffe_id = a.spiffe_id.to_string();
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
        let subject = match kind {
            EpochKind::Agent => SignalSubject::Agent(&spiffe_id),
            EpochKind::Owner => SignalSubject::Owner(name),
            EpochKind::Client => SignalSubject::Client(name),
            EpochKind::Grant => SignalSubject::Grant(name),
        };
        let why = format!("{} revoked by an administrator (kill switch)", kind.as_str());
        let signal = Signal::session_revoked(subject, now, "admin", &why, correlation_id);
        with_signals(authz, mutation, &[signal]).await.map(|mutation| (now, Some(mutation)))
    } else {
        Err(OAuthError::new(OAuthErrorCode::InvalidRequest, format!("no {} named {name:?}", kind.as_str())))
    };
    conclude(authz, event, outcome, |e| OAuthError::server_error(e.to_string())).await
}
