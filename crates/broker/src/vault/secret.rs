//! What a vault entry holds: its kind with the non-secret parameters (token endpoint, client id,
//! scope …) and the secret material, kept in zeroizing buffers whose `Debug` never shows them.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::VaultError;

/// Longest secret value accepted (API keys, client secrets, refresh tokens are far shorter).
pub const MAX_SECRET_LEN: usize = 16 * 1024;
/// Longest non-secret parameter (URLs, client ids, scopes, audiences).
const MAX_PARAM_LEN: usize = 2048;

/// A secret string, zeroized on drop; `Debug` prints `SecretString(..)`.
#[derive(Clone)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret itself; callers keep what they derive from it zeroizing too.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret as a zeroizing `String` (what [`crate::credentials::CredentialProvider`] returns).
    pub fn to_zeroizing(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.as_str().to_owned())
    }
}

impl From<Zeroizing<String>> for SecretString {
    fn from(value: Zeroizing<String>) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(..)")
    }
}

/// How a client authenticates at a token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// The kind of an entry and its non-secret parameters. These are stored in clear in the vault
/// file (so `list` can show them) and are authenticated: they are part of the entry's AEAD
/// associated data and of the document MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EntryKind {
    /// A static credential injected as is.
    ApiKey,
    /// OAuth client credentials; the broker runs the `client_credentials` grant.
    OauthClient {
        token_endpoint: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
        #[serde(default)]
        auth: ClientAuth,
    },
    /// A refresh token (and the client it was issued to); the broker runs the refresh grant
    /// and stores rotated refresh tokens back into the vault.
    RefreshToken {
        token_endpoint: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        #[serde(default)]
        auth: ClientAuth,
    },
    /// No stored secret: a Mandate access token obtained with the agent's own JWT-SVID from
    /// the SPIFFE Workload API (RFC 7523 JWT bearer grant).
    MandateWorkload {
        token_endpoint: String,
        resource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// The JWT-SVID's audience; the token endpoint's issuer when unset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
        /// Which of the caller's SPIFFE IDs to use when the Workload API offers several.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spiffe_id: Option<String>,
    },
    /// Identity Assertion JWT Authorization Grant: the stored ID token is traded at the IdP for
    /// an ID-JAG (RFC 8693 token exchange), which the resource AS redeems (RFC 7523 JWT bearer
    /// grant) for an access token; a new ID-JAG is minted whenever that token runs out.
    IdJag {
        /// The IdP's token endpoint, and this client's registration there.
        idp_token_endpoint: String,
        idp_client_id: String,
        #[serde(default)]
        idp_auth: ClientAuth,
        /// The resource AS's issuer (the ID-JAG's audience).
        audience: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resource: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// The resource AS's token endpoint, and this client's registration there.
        token_endpoint: String,
        client_id: String,
        #[serde(default)]
        auth: ClientAuth,
    },
}

impl EntryKind {
    /// The kind's wire name (`api_key`, `oauth_client`, `refresh_token`, `mandate_workload`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::OauthClient { .. } => "oauth_client",
            Self::RefreshToken { .. } => "refresh_token",
            Self::MandateWorkload { .. } => "mandate_workload",
            Self::IdJag { .. } => "id_jag",
        }
    }

    /// The token endpoint, for kinds that have one.
    pub fn token_endpoint(&self) -> Option<&str> {
        match self {
            Self::ApiKey => None,
            Self::OauthClient { token_endpoint, .. }
            | Self::RefreshToken { token_endpoint, .. }
            | Self::MandateWorkload { token_endpoint, .. }
            | Self::IdJag { token_endpoint, .. } => Some(token_endpoint),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), VaultError> {
        let bad = |why: String| Err(VaultError::InvalidParams(why));
        if let Some(endpoint) = self.token_endpoint() {
            check_endpoint(endpoint)?;
        }
        if let Self::IdJag { idp_token_endpoint, .. } = self {
            check_endpoint(idp_token_endpoint)?;
        }
        let texts: Vec<(&str, &str)> = match self {
            Self::ApiKey => vec![],
            Self::OauthClient { client_id, scope, resource, .. } => {
                let mut t = vec![("client_id", client_id.as_str())];
                t.extend(scope.as_deref().map(|s| ("scope", s)));
                t.extend(resource.as_deref().map(|s| ("resource", s)));
                t
            }
            Self::RefreshToken { client_id, scope, .. } => {
                let mut t = vec![("client_id", client_id.as_str())];
                t.extend(scope.as_deref().map(|s| ("scope", s)));
                t
            }
            Self::IdJag { idp_client_id, audience, resource, scope, client_id, .. } => {
                let mut t = vec![("idp_client_id", idp_client_id.as_str()), ("audience", audience.as_str())];
                t.push(("client_id", client_id.as_str()));
                t.extend(resource.as_deref().map(|s| ("resource", s)));
                t.extend(scope.as_deref().map(|s| ("scope", s)));
                t
            }
            Self::MandateWorkload { resource, scope, audience, spiffe_id, .. } => {
                let mut t = vec![("resource", resource.as_str())];
                t.extend(scope.as_deref().map(|s| ("scope", s)));
                t.extend(audience.as_deref().map(|s| ("audience", s)));
                t.extend(spiffe_id.as_deref().map(|s| ("spiffe_id", s)));
                t
            }
        };
        for (field, value) in texts {
            if value.is_empty() || value.len() > MAX_PARAM_LEN {
                return bad(format!("{field} must be 1 to {MAX_PARAM_LEN} characters"));
            }
            if value.chars().any(char::is_control) {
                return bad(format!("{field} must not contain control characters"));
            }
        }
        if let Self::MandateWorkload { spiffe_id: Some(id), .. } = self
            && !id.starts_with("spiffe://")
        {
            return bad("spiffe_id must be a spiffe:// URI".into());
        }
        Ok(())
    }

    /// Whether entries of this kind hold a secret value (all but `mandate_workload`).
    pub fn has_secret(&self) -> bool {
        !matches!(self, Self::MandateWorkload { .. })
    }

    /// Whether entries of this kind may also hold a client secret (refresh tokens of
    /// confidential clients; the resource AS's client secret of an ID-JAG entry).
    pub fn may_have_client_secret(&self) -> bool {
        matches!(self, Self::RefreshToken { .. } | Self::IdJag { .. })
    }
}

/// Token endpoints are `https://`; plain `http://` only to a loopback host (local tests and
/// an AS on the same machine), so a credential never crosses a network in clear.
fn check_endpoint(endpoint: &str) -> Result<(), VaultError> {
    let bad = |why: &str| Err(VaultError::InvalidParams(format!("token_endpoint {why}")));
    if endpoint.len() > MAX_PARAM_LEN || endpoint.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("is not a valid URL");
    }
    let Some(rest) = endpoint.strip_prefix("https://").or_else(|| endpoint.strip_prefix("http://")) else {
        return bad("must be an https:// URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return bad("must name a host (and no user info)");
    }
    if endpoint.starts_with("http://") {
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
            return bad("must be https:// (http:// only for a loopback host)");
        }
    }
    Ok(())
}

/// A vault entry's content: its kind and its secret material.
#[derive(Clone)]
pub struct Secret {
    pub kind: EntryKind,
    pub(crate) value: Option<SecretString>,
    pub(crate) client_secret: Option<SecretString>,
    pub(crate) idp_client_secret: Option<SecretString>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl Secret {
    pub fn api_key(key: SecretString) -> Self {
        Self { kind: EntryKind::ApiKey, value: Some(key), client_secret: None, idp_client_secret: None }
    }

    /// `kind` must be [`EntryKind::OauthClient`]; `client_secret` is its secret.
    pub fn oauth_client(kind: EntryKind, client_secret: SecretString) -> Self {
        Self { kind, value: Some(client_secret), client_secret: None, idp_client_secret: None }
    }

    /// `kind` must be [`EntryKind::RefreshToken`].
    pub fn refresh_token(kind: EntryKind, refresh_token: SecretString, client_secret: Option<SecretString>) -> Self {
        Self { kind, value: Some(refresh_token), client_secret, idp_client_secret: None }
    }

    /// `kind` must be [`EntryKind::MandateWorkload`]; nothing secret is stored.
    pub fn mandate_workload(kind: EntryKind) -> Self {
        Self { kind, value: None, client_secret: None, idp_client_secret: None }
    }

    /// `kind` must be [`EntryKind::IdJag`]: the subject ID token (replace it with `rotate`
    /// after the person signs in again), the client secret at the resource AS and the one at
    /// the IdP.
    pub fn id_jag(
        kind: EntryKind,
        id_token: SecretString,
        client_secret: SecretString,
        idp_client_secret: SecretString,
    ) -> Self {
        Self {
            kind,
            value: Some(id_token),
            client_secret: Some(client_secret),
            idp_client_secret: Some(idp_client_secret),
        }
    }

    /// An ID-JAG entry's client secret at the IdP.
    pub fn idp_client_secret(&self) -> Option<&SecretString> {
        self.idp_client_secret.as_ref()
    }

    /// The entry's secret: the API key, the OAuth client secret or the refresh token.
    pub fn value(&self) -> Option<&SecretString> {
        self.value.as_ref()
    }

    /// The client secret that goes with a refresh token, for confidential clients.
    pub fn client_secret(&self) -> Option<&SecretString> {
        self.client_secret.as_ref()
    }

    /// The secret material must match the kind, and values must be safe to put in an HTTP
    /// header (the proxy injects them): no control characters, bounded.
    pub(crate) fn validate(&self) -> Result<(), VaultError> {
        self.kind.validate()?;
        match (self.kind.has_secret(), &self.value) {
            (true, None) => return Err(VaultError::InvalidSecret("this kind needs a secret value")),
            (false, Some(_)) => return Err(VaultError::InvalidSecret("this kind stores no secret")),
            _ => {}
        }
        if self.client_secret.is_some() && !self.kind.may_have_client_secret() {
            return Err(VaultError::InvalidSecret(
                "only refresh_token and id_jag entries carry a separate client secret",
            ));
        }
        let is_id_jag = matches!(self.kind, EntryKind::IdJag { .. });
        if is_id_jag != (self.client_secret.is_some() && self.idp_client_secret.is_some())
            || (!is_id_jag && self.idp_client_secret.is_some())
        {
            return Err(VaultError::InvalidSecret(
                "an id_jag entry needs both client secrets, other kinds no IdP secret",
            ));
        }
        for value in self.value.iter().chain(&self.client_secret).chain(&self.idp_client_secret) {
            check_secret_value(value.expose())?;
        }
        Ok(())
    }
}

pub(crate) fn check_secret_value(value: &str) -> Result<(), VaultError> {
    if value.is_empty() {
        return Err(VaultError::InvalidSecret("the secret is empty"));
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(VaultError::InvalidSecret("the secret is longer than 16 KiB"));
    }
    if value.chars().any(char::is_control) {
        return Err(VaultError::InvalidSecret("the secret contains control characters (a newline?)"));
    }
    Ok(())
}
