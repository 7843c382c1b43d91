//! Registry changes: owners, agents, clients and resources. Every attempt, accepted or not, is
//! an audit event written in the same transaction as the change.

use mandate_core::{Agent, AuditEvent, Client, ClientAuthMethod, Name, Owner, Resource, ResourceUri, ScopeSet};
use mandate_crypto::{hash_secret, random_token};
use mandate_store::{EpochKind, Mutation, MutationError};

use crate::client_auth::parse_jwks;
use crate::{Authz, audit_failure};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(MutationError),
    #[error("unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Default)]
pub struct NewAgent {
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    /// Workload attestation selectors, e.g. `unix:uid:1000`.
    pub selectors: Vec<String>,
    /// Token exchange may issue this agent tokens that impersonate their subject.
    pub may_impersonate: bool,
}

#[derive(Debug, Clone, Default)]
pub struct NewClient {
    /// The agent the client authenticates as; none for an application people sign in to.
    pub agent: Option<String>,
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt` or `none` (public).
    pub auth_method: String,
    /// Required for `private_key_jwt`: a JWK Set with the client's public keys.
    pub jwks: Option<String>,
    /// Defaults to `<agent>.<random>` (or `app.<random>` without an agent).
    pub client_id: Option<String>,
    pub can_introspect: bool,
    /// Redirect URIs for the authorization code grant, matched exactly.
    pub redirect_uris: Vec<String>,
    /// Defaults: an agent's client gets client_credentials, jwt-bearer and token exchange; a
    /// client with redirect URIs also gets authorization_code and refresh_token.
    pub grant_types: Vec<String>,
    pub client_name: Option<String>,
    /// OpenID Connect Back-Channel Logout: where logout tokens for this client are posted.
    pub backchannel_logout_uri: Option<String>,
    /// CIBA (`poll` or `ping`); only with the CIBA grant. Unset means poll.
    pub backchannel_token_delivery_mode: Option<String>,
    /// CIBA ping mode: where callbacks are posted (https; loopback http only in insecure test setups).
    pub backchannel_client_notification_endpoint: Option<String>,
}

/// Grants an agent's client may use unless registered otherwise.
pub const AGENT_GRANTS: &[&str] = &[
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:token-exchange",
];
/// Grants of a client people sign in to.
pub const CODE_GRANTS: &[&str] = &["authorization_code", "refresh_token"];
/// Every grant type a client may be registered for.
pub const KNOWN_GRANTS: &[&str] = &[
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    crate::ciba::GRANT_CIBA,
];

/// A created client; `secret` is shown once and never stored in clear.
#[derive(Debug, Clone)]
pub struct CreatedClient {
    pub client: Client,
    pub secret: Option<String>,
}

/// Which registry record a delete names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Owner,
    Agent,
    Client,
    Resource,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Agent => "agent",
            Self::Client => "client",
            Self::Resource => "resource",
        }
    }
}

pub async fn create_owner(
    authz: &Authz,
    name: &str,
    display_name: Option<String>,
    correlation_id: &str,
) -> Result<Owner, RegistryError> {
    let mut event = AuditEvent::allow("registry.owner.create", correlation_id);
    event.owner = Some(name.to_owned());
    let prepared = Name::parse(name).map_err(invalid).map(|name| {
        let owner = Owner { name, display_name, password_hash: None, created_at_ms: authz.clock.now_ms() };
        (Mutation::CreateOwner(owner.clone()), owner)
    });
    change(authz, event, prepared).await
}

pub async fn create_agent(authz: &Authz, new: NewAgent, correlation_id: &str) -> Result<Agent, RegistryError> {
    let mut event = AuditEvent::allow("registry.agent.create", correlation_id);
    event.owner = Some(new.owner.clone());
    let prepared = (|| {
        let name = Name::parse(&new.name).map_err(invalid)?;
        let owner = Name::parse(&new.owner).map_err(invalid)?;
        let scopes = ScopeSet::from_tokens(&new.scopes).map_err(invalid)?;
        let agent = Agent {
            spiffe_id: authz.config.trust_domain.agent_id(&name),
            name,
            owner,
            scopes: scopes.to_vec(),
            selectors: new.selectors.clone(),
            may_impersonate: new.may_impersonate,
            created_at_ms: authz.clock.now_ms(),
        };
        Ok((Mutation::CreateAgent(agent.clone()), agent))
    })();
    if let Ok((_, agent)) = &prepared {
        event.agent = Some(agent.spiffe_id.to_string());
        event.scope = Some(agent.scopes.join(" "));
    }
    change(authz, event, prepared).await
}

pub async fn create_client(
    authz: &Authz,
    new: NewClient,
    correlation_id: &str,
) -> Result<CreatedClient, RegistryError> {
    let mut event = AuditEvent::allow("registry.client.create", correlation_id);
    let prepared = prepare_client(authz, new);
    if let Ok((_, created)) = &prepared {
        event.client = Some(created.client.client_id.clone());
        let agent = created.client.agent.as_ref().map_or("-".to_owned(), ToString::to_string);
        event.detail = Some(format!("agent={agent} auth_method={}", created.client.auth_method.as_str()));
    }
    change(authz, event, prepared).await
}

fn prepare_client(authz: &Authz, new: NewClient) -> Result<(Mutation, CreatedClient), RegistryError> {
    let agent = new.agent.as_deref().map(Name::parse).transpose().map_err(invalid)?;
    let auth_method = ClientAuthMethod::parse(&new.auth_method).ok_or_else(|| {
        invalid("token_endpoint_auth_method must be client_secret_basic, client_secret_post, private_key_jwt or none")
    })?;
    let client_id = match new.client_id {
        Some(id) => Name::parse(&id).map_err(invalid)?.to_string(),
        None => {
            let prefix = agent.as_ref().map_or("app".to_owned(), ToString::to_string);
            format!("{prefix}.{}", &hash_secret(&random_token(""))[..12])
        }
    };
    let (secret, jwks) = client_credential(auth_method, new.jwks)?;
    for uri in &new.redirect_uris {
        check_redirect_uri(uri).map_err(invalid)?;
    }
    let grant_types = client_grants(agent.is_some(), auth_method, &new.redirect_uris, new.grant_types)?;
    let mut metadata = crate::ciba::registered_delivery(
        new.backchannel_token_delivery_mode.as_deref(),
        new.backchannel_client_notification_endpoint.as_deref(),
        &grant_types,
        authz.config.allow_insecure_federation,
    )
    .map_err(invalid)?;
    if let Some(uri) = new.backchannel_logout_uri {
        crate::register::check_web_url(&uri).map_err(|why| invalid(format!("backchannel_logout_uri {why}")))?;
        metadata.insert("backchannel_logout_uri".into(), serde_json::Value::String(uri));
    }
    let metadata = (!metadata.is_empty()).then(|| serde_json::Value::Object(metadata).to_string());
    let client = Client {
        client_id,
        agent,
        auth_method,
        secret_hash: secret.as_deref().map(hash_secret),
        jwks,
        can_introspect: new.can_introspect,
        redirect_uris: new.redirect_uris,
        grant_types,
        client_name: new.client_name,
        metadata,
        created_at_ms: authz.clock.now_ms(),
    };
    Ok((Mutation::CreateClient(client.clone()), CreatedClient { client, secret }))
}

/// A fresh secret for the shared-secret methods; the registered JWKS for `private_key_jwt`.
pub fn client_credential(
    auth_method: ClientAuthMethod,
    jwks: Option<String>,
) -> Result<(Option<String>, Option<String>), RegistryError> {
    match (auth_method, jwks) {
        (ClientAuthMethod::None, None) => Ok((None, None)),
        (ClientAuthMethod::None, Some(_)) => Err(invalid("a JWKS is only for private_key_jwt clients")),
        (method, None) if method.uses_secret() => Ok((Some(random_token("mcs_")), None)),
        (method, Some(_)) if method.uses_secret() => Err(invalid("a JWKS is only for private_key_jwt clients")),
        (_, Some(jwks)) => {
            parse_jwks(&jwks).map_err(invalid)?;
            Ok((None, Some(jwks)))
        }
        (_, None) => Err(invalid("private_key_jwt clients need a JWKS")),
    }
}

/// The grant types a client gets: as asked (each known, and only what its shape allows), or
/// the defaults for its shape.
fn client_grants(
    has_agent: bool,
    auth_method: ClientAuthMethod,
    redirect_uris: &[String],
    asked: Vec<String>,
) -> Result<Vec<String>, RegistryError> {
    let mut defaults: Vec<&str> = Vec::new();
    if has_agent && auth_method != ClientAuthMethod::None {
        defaults.extend(AGENT_GRANTS);
    }
    if !redirect_uris.is_empty() {
        defaults.extend(CODE_GRANTS);
    }
    if asked.is_empty() {
        if defaults.is_empty() {
            return Err(invalid(
                "the client could use no grant: give it redirect URIs, or an agent and a confidential auth method",
            ));
        }
        return Ok(defaults.into_iter().map(str::to_owned).collect());
    }
    for grant in &asked {
        if !KNOWN_GRANTS.contains(&grant.as_str()) {
            return Err(invalid(format!("grant type {grant:?} is not supported")));
        }
        if grant == "authorization_code" && redirect_uris.is_empty() {
            return Err(invalid("authorization_code needs at least one redirect URI"));
        }
        let agent_grant = AGENT_GRANTS.contains(&grant.as_str()) || grant == crate::ciba::GRANT_CIBA;
        if agent_grant && !(has_agent && auth_method != ClientAuthMethod::None) {
            return Err(invalid(format!("grant type {grant} needs a confidential client registered for an agent")));
        }
    }
    Ok(asked)
}

/// OAuth 2.1 / RFC 9700 redirect URIs: absolute, no fragment; https, or http only to a loopback
/// host (native apps); private-use schemes (`com.example.app:/cb`) are accepted for native apps.
pub fn check_redirect_uri(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("redirect URI {raw:?} is not an absolute URI: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("redirect URI {raw:?} must not contain a fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(format!("redirect URI {raw:?} must use https unless it is a loopback address")),
        "javascript" | "data" | "file" | "vbscript" => Err(format!("redirect URI scheme of {raw:?} is not allowed")),
        scheme if scheme.contains('.') => Ok(()),
        _ => Err(format!("redirect URI {raw:?} must be https, loopback http, or a private-use (reverse-DNS) scheme")),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

pub async fn create_resource(
    authz: &Authz,
    uri: &str,
    scopes: &[String],
    correlation_id: &str,
) -> Result<Resource, RegistryError> {
    let mut event = AuditEvent::allow("registry.resource.create", correlation_id);
    event.resource = Some(uri.to_owned());
    let prepared = (|| {
        let uri = ResourceUri::parse(uri).map_err(invalid)?;
        let scopes = ScopeSet::from_tokens(scopes).map_err(invalid)?;
        if scopes.is_empty() {
            return Err(invalid("a resource needs at least one scope"));
        }
        let resource = Resource { uri, scopes: scopes.to_vec(), created_at_ms: authz.clock.now_ms() };
        Ok((Mutation::CreateResource(resource.clone()), resource))
    })();
    if let Ok((_, r)) = &prepared {
        event.scope = Some(r.scopes.join(" "));
    }
    change(authz, event, prepared).await
}

/// Deletes a record; refused while others reference it (an owner with agents, an agent with
/// clients). Deleting an owner, agent or client also revokes every token issued to it, so nothing
/// outlives the record that vouched for it.
pub async fn delete(authz: &Authz, kind: RecordKind, key: &str, correlation_id: &str) -> Result<(), RegistryError> {
    let mut event = AuditEvent::allow(format!("registry.{}.delete", kind.as_str()), correlation_id);
    let key = key.to_owned();
    match kind {
        RecordKind::Owner => event.owner = Some(key.clone()),
        RecordKind::Agent => event.agent = Some(authz.config.trust_domain.agent_id_str(&key)),
        RecordKind::Client => event.client = Some(key.clone()),
        RecordKind::Resource => event.resource = Some(key.clone()),
    }
    let mutation = match kind {
        RecordKind::Owner => Mutation::DeleteOwner(key.clone()),
        RecordKind::Agent => Mutation::DeleteAgent(key.clone()),
        RecordKind::Client => Mutation::DeleteClient(key.clone()),
        RecordKind::Resource => Mutation::DeleteResource(key.clone()),
    };
    change(authz, event, Ok((mutation, ()))).await?;
    let epoch_kind = match kind {
        RecordKind::Owner => EpochKind::Owner,
        RecordKind::Agent => EpochKind::Agent,
        RecordKind::Client => EpochKind::Client,
        RecordKind::Resource => return Ok(()),
    };
    let mut event = AuditEvent::allow(format!("revoke.{}", epoch_kind.as_str()), correlation_id)
        .with_detail(format!("{} {key} was deleted", kind.as_str()));
    event.owner = (kind == RecordKind::Owner).then(|| key.clone());
    event.client = (kind == RecordKind::Client).then(|| key.clone());
    let now = authz.clock.now_secs();
    let revoke = Mutation::RevokeBefore { kind: epoch_kind, name: key.clone(), not_before_secs: now };
    let spiffe_id = authz.config.trust_domain.agent_id_str(&key);
    let signals = crate::ssf::events::deletion_signals(kind, &key, &spiffe_id, now, correlation_id);
    let prepared = crate::ssf::with_signals(authz, revoke, &signals)
        .await
        .map(|mutation| (mutation, ()))
        .map_err(|e| RegistryError::Unavailable(e.description));
    change(authz, event, prepared).await
}

/// Creates a workload identity federation rule (see `crate::federation` for what is checked).
pub async fn create_federation_rule(
    authz: &Authz,
    new: crate::federation::NewFederationRule,
    correlation_id: &str,
) -> Result<mandate_core::FederationRule, RegistryError> {
    let mut event = AuditEvent::allow("trust.federation.create", correlation_id);
    event.agent = Some(authz.config.trust_domain.agent_id_str(&new.agent));
    event.subject = Some(format!("{}#{}", new.issuer, new.subject));
    let prepared = crate::federation::validate_rule(authz, new)
        .await
        .map_err(RegistryError::Invalid)
        .map(|rule| (Mutation::CreateFederationRule(rule.clone()), rule));
    if let Ok((_, rule)) = &prepared {
        event.client = Some(format!("{}{}", crate::federation::CLIENT_PREFIX, rule.name));
        event.detail = Some(format!(
            "rule={} subject_match={} claims={} max_ttl_secs={} keys={}",
            rule.name,
            rule.subject_match.as_str(),
            rule.claims.len(),
            rule.max_ttl_secs,
            rule.jwks_url.as_deref().unwrap_or(if rule.jwks.is_some() { "inline" } else { "local jwt-svid" }),
        ));
    }
    change(authz, event, prepared).await
}

/// Deletes a federation rule; tokens already issued under it stay valid until they expire
/// (revoke the agent to end them at once).
pub async fn delete_federation_rule(authz: &Authz, name: &str, correlation_id: &str) -> Result<(), RegistryError> {
    let mut event = AuditEvent::allow("trust.federation.delete", correlation_id);
    event.client = Some(format!("{}{name}", crate::federation::CLIENT_PREFIX));
    event.detail = Some(format!("rule={name}"));
    change(authz, event, Ok((Mutation::DeleteFederationRule(name.to_owned()), ()))).await
}

pub(crate) fn invalid(e: impl ToString) -> RegistryError {
    RegistryError::Invalid(e.to_string())
}

/// Applies a prepared change with its event, or logs the refusal of an invalid one.
pub(crate) async fn change<T>(
    authz: &Authz,
    event: AuditEvent,
    prepared: Result<(Mutation, T), RegistryError>,
) -> Result<T, RegistryError> {
    let unavailable = |e| RegistryError::Unavailable(audit_failure(e).description);
    match prepared {
        Err(error) => {
            let event = event.refused("invalid_request", &error.to_string());
            authz.log.record(event).await.map_err(unavailable)?;
            Err(error)
        }
        Ok((mutation, value)) => match authz.log.apply(mutation, event).await.map_err(unavailable)? {
            Ok(_) => Ok(value),
            Err(refused) => Err(RegistryError::Refused(refused)),
        },
    }
}
