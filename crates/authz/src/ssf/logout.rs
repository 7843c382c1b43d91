//! OpenID Connect Back-Channel Logout 1.0: when an owner's sessions are revoked, every client
//! that registered a `backchannel_logout_uri` and holds the owner's consent is sent a logout
//! token (`typ: logout+jwt`). Tokens are queued with the revocation and delivered (with retries)
//! by the push task, as `logout_token` form posts answered `200` or `204`.

use mandate_core::{AuditEvent, Client, OAuthError};
use mandate_store::{LogoutEvent, Mutation, SsfMutation};
use serde_json::{Value, json};

use super::push::{MAX_ATTEMPTS, backoff_ms, describe};
use crate::jwks_fetch::post_vetted;
use crate::{Authz, new_jti, store_failure};

pub const LOGOUT_TYP: &str = "logout+jwt";
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token is short-lived: it is signed when delivered, and a late one is meaningless.
pub const LOGOUT_TOKEN_TTL_SECS: i64 = 120;
const BATCH: i64 = 50;

/// The client's registered `backchannel_logout_uri` (RFC 7591 metadata), if any.
pub fn logout_uri(client: &Client) -> Option<String> {
    let metadata: Value = serde_json::from_str(client.metadata.as_deref()?).ok()?;
    metadata.get("backchannel_logout_uri")?.as_str().map(str::to_owned)
}

/// Logout tokens for `owner`, one per client with a logout URI that the owner consented to.
pub async fn enqueue(authz: &Authz, owner: &str) -> Result<Vec<Mutation>, OAuthError> {
    let clients = authz.store.clients().await.map_err(store_failure)?;
    let resources = authz.store.resources().await.map_err(store_failure)?;
    let mut queued = Vec::new();
    for client in clients {
        let Some(uri) = logout_uri(&client) else { continue };
        let mut consented = false;
        for resource in &resources {
            let consent = authz.store.consent(owner, &client.client_id, resource.uri.as_str()).await;
            if consent.map_err(store_failure)?.is_some() {
                consented = true;
                break;
            }
        }
        if !consented {
            continue;
        }
        let jti = new_jti();
        let claims = json!({"aud": client.client_id, "jti": jti, "sub": owner, "events": {LOGOUT_EVENT: {}}});
        let now_ms = authz.clock.now_ms();
        queued.push(Mutation::Ssf(SsfMutation::EnqueueLogout(LogoutEvent {
            jti,
            client_id: client.client_id.clone(),
            endpoint_url: uri,
            claims: claims.to_string(),
            created_at_ms: now_ms,
            attempts: 0,
            next_attempt_ms: now_ms,
        })));
    }
    Ok(queued)
}

/// Signs queued claims as a logout token: `iss` this issuer, `iat` now, a short `exp`, no `nonce`.
pub fn sign_logout(authz: &Authz, claims: &str) -> Result<String, OAuthError> {
    let mut claims: Value = serde_json::from_str(claims)
        .map_err(|e| OAuthError::server_error(format!("queued token is unreadable: {e}")))?;
    let object = claims.as_object_mut().ok_or_else(|| OAuthError::server_error("queued token is not an object"))?;
    let now = authz.clock.now_secs();
    object.insert("iss".into(), Value::String(authz.config.issuer.clone()));
    object.insert("iat".into(), now.into());
    object.insert("exp".into(), (now + LOGOUT_TOKEN_TTL_SECS).into());
    let key = authz.keys.signer(authz.config.access_token_alg).map_err(|e| OAuthError::server_error(e.to_string()))?;
    mandate_crypto::jose::sign_jwt(&key, LOGOUT_TYP, &claims).map_err(|e| OAuthError::server_error(e.to_string()))
}

/// One round over the due logout tokens; returns how many were accepted.
pub async fn deliver_due(authz: &Authz) -> Result<usize, String> {
    let now_ms = authz.clock.now_ms();
    let mut delivered = 0;
    for queued in authz.store.logout_events(BATCH).await.map_err(|e| e.to_string())? {
        if queued.next_attempt_ms <= now_ms && deliver(authz, queued).await? {
            delivered += 1;
        }
    }
    Ok(delivered)
}

async fn deliver(authz: &Authz, queued: LogoutEvent) -> Result<bool, String> {
    let token = sign_logout(authz, &queued.claims).map_err(|e| e.description)?;
    let insecure = authz.config.allow_insecure_federation;
    // A JWS is base64url and dots only, so the form value needs no escaping.
    let body = format!("logout_token={token}");
    let answer = post_vetted(&queued.endpoint_url, insecure, "application/x-www-form-urlencoded", None, body).await;
    let attempts = queued.attempts + 1;
    let detail = format!("logout token {} attempt={attempts}", queued.jti);
    let mut event = AuditEvent::allow("logout.backchannel", uuid::Uuid::now_v7().to_string()).with_detail(&detail);
    event.client = Some(queued.client_id.clone());
    let drop = Mutation::Ssf(SsfMutation::DropLogout(queued.jti.clone()));
    let (mutation, event, accepted) = match answer {
        Ok(200 | 204) => (drop, event, true),
        Ok(400) => (drop, event.refused("rejected", &format!("{detail}: the client refused it (400)")), false),
        failed if attempts >= MAX_ATTEMPTS => {
            (drop, event.refused("undeliverable", &format!("{detail}: {}", describe(&failed))), false)
        }
        failed => {
            let retry = SsfMutation::RetryLogout {
                jti: queued.jti.clone(),
                attempts,
                next_attempt_ms: authz.clock.now_ms() + backoff_ms(attempts),
            };
            (Mutation::Ssf(retry), event.refused("retry", &format!("{detail}: {}", describe(&failed))), false)
        }
    };
    let applied = authz.log.apply(mutation, event).await.map_err(|e| e.to_string())?;
    Ok(accepted && applied.is_ok())
}
