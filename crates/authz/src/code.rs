//! The `authorization_code` grant (RFC 6749 §4.1.3, PKCE RFC 7636 §4.6, OAuth 2.1): redeems a
//! code from `crate::authorize` for an access token acting for the owner who signed in, a
//! rotating refresh token, and an ID token when `openid` was granted. A code redeemed twice
//! revokes everything its first redemption issued.

use mandate_core::{AuditEvent, OAuthError, ScopeSet};
use mandate_crypto::hash_secret;
use mandate_store::Mutation;
use serde::{Deserialize, Serialize};

use crate::authorize::{SCOPE_OPENID, pkce_verifies};
use crate::client_auth::AuthenticatedClient;
use crate::id_token::{SignIn, sign_id_token};
use crate::refresh::{Person, check_resource, invalid_grant, issue_for_person, revoke_family};
use crate::token::{TokenRequest, TokenResponse};
use crate::{Authz, store_failure};

pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";

/// What a code stands for (stored as `AuthCode.grant`): decided at the authorization endpoint,
/// checked and spent here. `family` names the refresh-token family its redemption starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CodeGrant {
    pub owner: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub resource: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub auth_time: i64,
    /// RFC 9449 §10: the code may only be redeemed with a DPoP proof by this key.
    pub dpop_jkt: Option<String>,
    pub family: String,
}

/// Redeems a code: one transaction spends it and stores the first refresh token (and the DPoP
/// proof's one-time id), so a code can never give two sets of tokens.
pub(crate) async fn redeem(
    authz: &Authz,
    client: &AuthenticatedClient,
    request: &TokenRequest,
    event: &mut AuditEvent,
) -> Result<(TokenResponse, Option<Mutation>), OAuthError> {
    let code = crate::token::required(&request.code, "code")?;
    let code_hash = hash_secret(code);
    let stored = authz.store.auth_code(&code_hash).await.map_err(store_failure)?;
    let stored = stored.ok_or_else(|| invalid_grant("unknown authorization code"))?;
    let grant: CodeGrant = serde_json::from_str(&stored.grant)
        .map_err(|e| OAuthError::server_error(format!("stored authorization code is unreadable: {e}")))?;
    describe(event, &grant);
    if stored.used_at_ms.is_some() {
        // RFC 6749 §4.1.2 / RFC 9700 §4.5: a replayed code means it leaked; end what it gave.
        let why = "authorization code presented again";
        revoke_family(authz, &grant.family, &grant.client_id, &grant.owner, why, &event.correlation_id).await?;
        return Err(invalid_grant("the authorization code was already used; the tokens it gave are revoked"));
    }
    let now_ms = authz.clock.now_ms();
    if stored.expires_at_ms <= now_ms {
        return Err(invalid_grant("the authorization code has expired"));
    }
    if stored.client_id != client.client.client_id {
        return Err(invalid_grant("the authorization code was issued to another client"));
    }
    check_request(request, &grant)?;
    let dpop = crate::dpop::dpop_binding(authz, &request.dpop_proofs)?;
    let jkt = dpop.as_ref().map(|b| b.jkt.clone());
    if grant.dpop_jkt.as_ref().is_some_and(|bound| jkt.as_ref() != Some(bound)) {
        return Err(invalid_grant("the code is bound to a DPoP key (dpop_jkt): send a proof made with it"));
    }
    let resource = authz.store.resource(&grant.resource).await.map_err(store_failure)?;
    let resource = resource.ok_or_else(|| invalid_grant("the resource no longer exists"))?;
    let scope = ScopeSet::parse(&grant.scope).map_err(|e| OAuthError::server_error(e.to_string()))?;
    let person = Person {
        owner: &grant.owner,
        auth_time: grant.auth_time,
        resource: &resource,
        granted: &scope,
        scope: &scope,
        family: &grant.family,
        jkt: jkt.as_deref(),
        bind_refresh: jkt.as_deref().filter(|_| !client.is_confidential()),
        grant_type: GRANT_AUTHORIZATION_CODE,
    };
    let (mut response, create_refresh) = issue_for_person(authz, client, &person, event)?;
    if scope.contains(SCOPE_OPENID) {
        let sign_in = SignIn {
            subject: &grant.owner,
            client_id: &grant.client_id,
            nonce: grant.nonce.as_deref(),
            auth_time: grant.auth_time,
        };
        response.id_token = Some(sign_id_token(authz, &sign_in)?);
    }
    let mut mutations = vec![Mutation::RedeemAuthCode { code_hash, now_ms }, create_refresh];
    mutations.extend(dpop.map(|b| b.replay));
    Ok((response, Some(Mutation::All(mutations))))
}

/// PKCE and the parameters that must repeat what the authorization request said.
fn check_request(request: &TokenRequest, grant: &CodeGrant) -> Result<(), OAuthError> {
    let verifier = request.code_verifier.as_deref();
    let verifier = verifier.ok_or_else(|| OAuthError::invalid_request("code_verifier is required (PKCE)"))?;
    if !pkce_verifies(verifier, &grant.code_challenge) {
        return Err(invalid_grant("code_verifier does not match the code_challenge"));
    }
    if request.redirect_uri.as_ref().is_some_and(|r| *r != grant.redirect_uri) {
        return Err(invalid_grant("redirect_uri differs from the authorization request"));
    }
    check_resource(&request.resources, &grant.resource)
}

fn describe(event: &mut AuditEvent, grant: &CodeGrant) {
    event.owner = Some(grant.owner.clone());
    event.subject = Some(grant.owner.clone());
    event.resource = Some(grant.resource.clone());
    event.scope = Some(grant.scope.clone());
    event.detail = Some(format!("grant={}", grant.family));
}
