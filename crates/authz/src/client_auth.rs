//! Client authentication at the token, introspection and revocation endpoints:
//! `client_secret_basic`, `client_secret_post`, `private_key_jwt` (RFC 7523 §2.2), and public
//! clients (`none`) that only name themselves. Every failure is `invalid_client`, with a
//! description that never echoes a secret.

use mandate_core::{Agent, Client, ClientAuthMethod, OAuthError};
use mandate_crypto::jose::peek_claims;
use mandate_crypto::{PublicKey, VerifyOptions, constant_time_eq, hash_secret, verify_jwt};
use mandate_store::Mutation;
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

/// The answer to a client assertion whose `jti` was seen before.
pub fn assertion_replayed() -> OAuthError {
    OAuthError::invalid_client("client assertion rejected: it was already used")
}
