//! Client authentication at the token, introspection and revocation endpoints:
//! `client_secret_basic`, `client_secret_post`, `private_key_jwt` (RFC 7523 §2.2), and public
//! clients (`none`) that only name themselves. Every failure is `invalid_client`, with a
//! description that never echoes a secret.

use mandate_core::{Agent, Client, ClientAuthMethod, OAuthError};
use mandate_crypto::jose::peek_claims;
use mandate_crypto::{PublicKey, VerifyOptions, constant_time_eq, hash_secret, verify_jwt};
use mandate_store::{EpochKind, Mutation};
use serde_json::Value;
use zeroize::Zeroizing;

use mandate_core::AuditEvent;

use crate::{Authz, audit_failure, store_failure};

pub const ASSERTION_TYPE_JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Header `typ` values accepted on client assertions (draft-ietf-oauth-rfc7523bis, and plain JWT).
const ASSERTION_TYPES: &[&str] = &["client-authentication+jwt", "jwt"];

/// The credentials a request carried.
#[derive(Debug, Default)]
pub enum Presented {
    #[default]
    None,
    /// Only a `client_id` parameter: a public client (RFC 6749 §2.1), or a confidential one that
    /// forgot its credentials.
    Public {
        client_id: String,
    },
    Secret {
        client_id: String,
        secret: Zeroizing<String>,
        method: ClientAuthMethod,
    },
    Assertion {
        client_id: Option<String>,
        assertion: String,
    },
}

impl Presented {
    /// The client the request claims to be, for the audit trail of a refusal.
    pub fn claimed_client_id(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Public { client_id } => Some(client_id.clone()),
            Self::Secret { client_id, .. } => Some(client_id.clone()),
            Self::Assertion { client_id: Some(id), .. } => Some(id.clone()),
            Self::Assertion { assertion, .. } => {
                peek_claims(assertion).ok().and_then(|c| c.get("sub").and_then(Value::as_str).map(str::to_owned))
            }
        }
    }
}

/// A client that proved who it is (or, if public, named itself), with the agent it acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedClient {
    pub client: Client,
    pub agent: Option<Agent>,
}

impl AuthenticatedClient {
    /// The agent, for grants only an agent's client may use.
    pub fn agent(&self) -> Result<&Agent, OAuthError> {
        self.agent.as_ref().ok_or_else(|| {
            OAuthError::new(
                mandate_core::OAuthErrorCode::UnauthorizedClient,
                "this grant needs a client registered for an agent",
            )
        })
    }

    /// Whether the client proved possession of a credential (not a public client).
    pub fn is_confidential(&self) -> bool {
        self.client.auth_method != ClientAuthMethod::None
    }
}

/// Authenticates the client. A valid client assertion is spent here, before the request is
/// processed further: it is single-use whatever the request's outcome (RFC 7523 §3), so a
/// replayed one never reaches grant checks that could reveal anything.
pub async fn authenticate(
    authz: &Authz,
    presented: Presented,
    correlation_id: &str,
) -> Result<AuthenticatedClient, OAuthError> {
    let (client, replay_guard) = match presented {
        Presented::None => return Err(OAuthError::invalid_client("client authentication is required")),
        Presented::Public { client_id } => (check_public(authz, &client_id).await?, None),
        Presented::Secret { client_id, secret, method } => {
            (check_secret(authz, &client_id, &secret, method).await?, None)
        }
        Presented::Assertion { client_id, assertion } => {
            let (client, guard) = check_assertion(authz, client_id.as_deref(), &assertion).await?;
            (client, Some(guard))
        }
    };
    let agent = client_agent(authz, &client).await?;
    if let Some((guard, jti)) = replay_guard {
        let mut event = AuditEvent::allow("client.authenticate", correlation_id)
            .with_detail(format!("private_key_jwt assertion jti={jti}"));
        event.client = Some(client.client_id.clone());
        event.agent = agent.as_ref().map(|a| a.spiffe_id.to_string());
        event.owner = agent.as_ref().map(|a| a.owner.to_string());
        if authz.log.apply(guard, event).await.map_err(audit_failure)?.is_err() {
            return Err(assertion_replayed());
        }
    }
    Ok(AuthenticatedClient { client, agent })
}

/// The agent a client authenticates as, if it has one; a client whose agent is gone is refused.
pub(crate) async fn client_agent(authz: &Authz, client: &Client) -> Result<Option<Agent>, OAuthError> {
    let Some(name) = &client.agent else {
        return Ok(None);
    };
    let agent = authz.store.agent(name.as_str()).await.map_err(store_failure)?;
    agent.map(Some).ok_or_else(|| OAuthError::invalid_client("the client's agent no longer exists"))
}

/// A client that presents no credential must be registered as public; a confidential client
/// that omits its credentials is refused rather than downgraded.
async fn check_public(authz: &Authz, client_id: &str) -> Result<Client, OAuthError> {
    let client = crate::clients::find_client(authz, client_id).await?;
    match client {
        Some(client) if client.auth_method == ClientAuthMethod::None => Ok(client),
        Some(client) => Err(OAuthError::invalid_client(format!(
            "client authentication is required ({})",
            client.auth_method.as_str()
        ))),
        None => Err(OAuthError::invalid_client("unknown client")),
    }
}

async fn check_secret(
    authz: &Authz,
    client_id: &str,
    secret: &str,
    method: ClientAuthMethod,
) -> Result<Client, OAuthError> {
    let presented_hash = hash_secret(secret);
    let client = authz.store.client(client_id).await.map_err(store_failure)?;
    let stored_hash = client.as_ref().and_then(|c| c.secret_hash.clone()).unwrap_or_else(|| "0".repeat(64));
    // Compare even for unknown clients so timing does not reveal which client ids exist.
    let matches = constant_time_eq(presented_hash.as_bytes(), stored_hash.as_bytes());
    let Some(client) = client.filter(|_| matches) else {
        return Err(OAuthError::invalid_client("unknown client or wrong secret"));
    };
    if client.auth_method != method {
        return Err(OAuthError::invalid_client(format!("client is registered for {}", client.auth_method.as_str())));
    }
    Ok(client)
}

async fn check_assertion(
    authz: &Authz,
    client_id_param: Option<&str>,
    assertion: &str,
) -> Result<(Client, (Mutation, String)), OAuthError> {
    let bad = |why: &str| OAuthError::invalid_client(format!("client assertion rejected: {why}"));
    let unverified = peek_claims(assertion).map_err(|e| bad(&e.to_string()))?;
    let subject = unverified.get("sub").and_then(Value::as_str).ok_or_else(|| bad("no \"sub\""))?;
    if client_id_param.is_some_and(|id| id != subject) {
        return Err(bad("client_id does not match the assertion's subject"));
    }
    // Metadata-document clients verify with their document's keys, so the lookup goes through
    // find_client (a document that cannot be used answers invalid_client with its reason).
    let client = crate::clients::find_client(authz, subject).await?.ok_or_else(|| bad("unknown client"))?;
    if client.auth_method != ClientAuthMethod::PrivateKeyJwt {
        return Err(bad("client is not registered for private_key_jwt"));
    }
    let keys = client_keys(&client).map_err(|e| bad(&e))?;
    let config = &authz.config;
    let audiences = [
        config.issuer.clone(),
        config.token_endpoint(),
        format!("{}/oauth2/introspect", config.issuer),
        format!("{}/oauth2/revoke", config.issuer),
    ];
    let audience_refs: Vec<&str> = audiences.iter().map(String::as_str).collect();
    let now = authz.clock.now_secs();
    let opts = VerifyOptions {
        typ: ASSERTION_TYPES,
        typ_optional: true,
        issuer: Some(&client.client_id),
        audience: &audience_refs,
        now,
        leeway_secs: config.leeway_secs,
    };
    let claims = verify_jwt(assertion, &keys, &opts).map_err(|e| bad(&e.to_string()))?;
    if claims.get("sub").and_then(Value::as_str) != Some(client.client_id.as_str()) {
        return Err(bad("\"sub\" must be the client_id"));
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| bad("\"jti\" is required"))?;
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
    if exp - now > config.max_assertion_lifetime_secs + config.leeway_secs {
        return Err(bad("lifetime exceeds the allowed maximum"));
    }
    let guard = Mutation::ConsumeOnce {
        id: format!("client-assertion:{}:{jti}", client.client_id),
        expires_at_secs: exp + config.leeway_secs,
    };
    Ok((client, (guard, jti.to_owned())))
}

/// The public keys a `private_key_jwt` client registered.
pub fn client_keys(client: &Client) -> Result<Vec<PublicKey>, String> {
    let jwks = client.jwks.as_deref().ok_or("client has no registered keys")?;
    parse_jwks(jwks)
}

/// Parses a JWK Set document, refusing unsupported or private keys.
pub fn parse_jwks(jwks: &str) -> Result<Vec<PublicKey>, String> {
    let doc: Value = serde_json::from_str(jwks).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = doc.get("keys").and_then(Value::as_array).ok_or("JWKS must have a \"keys\" array")?;
    if keys.is_empty() {
        return Err("JWKS has no keys".into());
    }
    keys.iter().map(|k| PublicKey::from_jwk(k).map_err(|e| e.to_string())).collect()
}

/// A workload of this trust domain calling the Transaction Token Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedWorkload {
    /// Its SPIFFE ID (the Txn-Token's `req_wl`).
    pub spiffe_id: String,
    /// The registered client it authenticated as, when it did not use a JWT-SVID.
    pub client: Option<AuthenticatedClient>,
}

/// Authenticates a workload of this trust domain: a JWT-SVID Mandate issued, sent as a
/// `jwt-bearer` client assertion (its `jti`, if any, is spent here), or a confidential client
/// registered for an agent allowed the token-exchange grant (the agent is the workload).
pub async fn authenticate_workload(
    authz: &Authz,
    presented: Presented,
    correlation_id: &str,
) -> Result<AuthenticatedWorkload, OAuthError> {
    if let Presented::Assertion { client_id, assertion } = &presented
        && is_own_jwt_svid(authz, assertion)
    {
        let spiffe_id = check_jwt_svid(authz, client_id.as_deref(), assertion, correlation_id).await?;
        return Ok(AuthenticatedWorkload { spiffe_id, client: None });
    }
    let client = authenticate(authz, presented, correlation_id).await?;
    let unauthorized = |why: &str| OAuthError::new(mandate_core::OAuthErrorCode::UnauthorizedClient, why);
    let agent = client.agent()?;
    if !client.is_confidential() {
        return Err(unauthorized("the Transaction Token Service is for confidential clients"));
    }
    if !client.client.allows_grant(crate::exchange::GRANT_TOKEN_EXCHANGE) {
        return Err(unauthorized("client is not registered for token exchange"));
    }
    Ok(AuthenticatedWorkload { spiffe_id: agent.spiffe_id.to_string(), client: Some(client) })
}

/// Whether an assertion claims to be one of our JWT-SVIDs (routing only; verified after).
fn is_own_jwt_svid(authz: &Authz, assertion: &str) -> bool {
    let issuer = crate::federation::own_spiffe_issuer(authz);
    peek_claims(assertion).ok().and_then(|c| c.get("iss").and_then(Value::as_str).map(|i| i == issuer)) == Some(true)
}

/// A JWT-SVID of this trust domain addressed to this server; returns its SPIFFE ID.
async fn check_jwt_svid(
    authz: &Authz,
    client_id: Option<&str>,
    assertion: &str,
    correlation_id: &str,
) -> Result<String, OAuthError> {
    let bad = |why: &str| OAuthError::invalid_client(format!("JWT-SVID rejected: {why}"));
    let claims = crate::exchange::jwt_svid(authz, assertion).map_err(|e| bad(&e))?;
    let subject = claims.get("sub").and_then(Value::as_str).ok_or_else(|| bad("no \"sub\""))?;
    let own = format!("spiffe://{}/", authz.config.trust_domain.as_str());
    if subject.strip_prefix(&own).is_none_or(|path| path.is_empty() || path.contains(['?', '#'])) {
        return Err(bad("its subject is not a SPIFFE ID of this trust domain"));
    }
    if client_id.is_some_and(|c| c != subject) {
        return Err(bad("client_id does not match its subject"));
    }
    check_svid_agent(authz, subject, claims.get("iat").and_then(Value::as_i64)).await?;
    if let Some(jti) = claims.get("jti") {
        let jti = jti.as_str().filter(|j| !j.is_empty() && j.len() <= 256).ok_or_else(|| bad("malformed \"jti\""))?;
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or_default();
        let guard = Mutation::ConsumeOnce {
            id: format!("jwt-svid:{subject}:{jti}"),
            expires_at_secs: exp + authz.config.leeway_secs,
        };
        let mut event =
            AuditEvent::allow("client.authenticate", correlation_id).with_detail(format!("jwt-svid jti={jti}"));
        event.agent = Some(subject.to_owned());
        if authz.log.apply(guard, event).await.map_err(audit_failure)?.is_err() {
            return Err(bad("it was already used"));
        }
    }
    Ok(subject.to_owned())
}

/// Mandate issues JWT-SVIDs to agents: the agent must still exist, and the kill switch (its or
/// its owner's "not before" epoch) ends its JWT-SVIDs as it ends its tokens.
async fn check_svid_agent(authz: &Authz, subject: &str, iat: Option<i64>) -> Result<(), OAuthError> {
    let bad = |why: &str| OAuthError::invalid_client(format!("JWT-SVID rejected: {why}"));
    let prefix = authz.config.trust_domain.agent_id_str("");
    let Some(name) = subject.strip_prefix(&prefix) else {
        return Ok(());
    };
    let agent =
        authz.store.agent(name).await.map_err(store_failure)?.ok_or_else(|| bad("its agent no longer exists"))?;
    let subjects = [(EpochKind::Agent, name), (EpochKind::Owner, agent.owner.as_str())];
    let epoch = authz.store.revoked_before(&subjects).await.map_err(store_failure)?;
    // Without `iat` the SVID's age is unknown: any revocation ends it.
    if epoch.is_some_and(|not_before| iat.is_none_or(|iat| iat <= not_before)) {
        return Err(bad("its agent or owner was revoked"));
    }
    Ok(())
}

/// The answer to a client assertion whose `jti` was seen before.
pub fn assertion_replayed() -> OAuthError {
    OAuthError::invalid_client("client assertion rejected: it was already used")
}
