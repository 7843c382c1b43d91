//! Validated identifiers: registry names, SPIFFE trust domains and IDs, resource URIs.
//! Each type can only be built from input that passed its rules ("parse, don't validate").

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct ValidationError {
    pub what: &'static str,
    pub reason: String,
}

impl ValidationError {
    fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self { what, reason: reason.into() }
    }
}

/// A registry name (owner, agent): 1–63 chars of `a-z 0-9 . _ -`, starting with a letter or digit.
/// Names appear in SPIFFE ID paths, so they use the SPIFFE path-segment character set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid_chars =
            raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
        let starts_well = raw.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if raw.is_empty() || raw.len() > 63 || !valid_chars || !starts_well {
            return Err(ValidationError::new(
                "name",
                format!("{raw:?} must be 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Name> for String {
    fn from(value: Name) -> Self {
        value.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`; at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let valid = !raw.is_empty()
            && raw.len() <= 255
            && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
        if !valid {
            return Err(ValidationError::new(
                "trust domain",
                format!("{raw:?} must be lowercase letters, digits, '.', '-', '_'"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of an agent in this trust domain: `spiffe://<td>/agent/<name>`.
    pub fn agent_id(&self, agent: &Name) -> SpiffeId {
        SpiffeId(format!("spiffe://{}/agent/{}", self.0, agent.as_str()))
    }

    /// The SPIFFE ID an agent of this name would have, for naming unvalidated input in logs.
    pub fn agent_id_str(&self, agent: &str) -> String {
        format!("spiffe://{}/agent/{agent}", self.0)
    }

    /// What follows `spiffe://<td>/agent/` when `id` is an agent path of this trust domain
    /// (the agent's name; not validated), without allocating.
    pub fn agent_name<'a>(&self, id: &'a str) -> Option<&'a str> {
        id.strip_prefix("spiffe://")?.strip_prefix(self.0.as_str())?.strip_prefix("/agent/")
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID (`spiffe://trust-domain/path`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpiffeId(String);

impl SpiffeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A protected resource identifier (RFC 8707 §2): an absolute URI without a fragment.
/// Compared by exact string, as audiences are (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceUri(String);

impl ResourceUri {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let bad = |reason: &str| Err(ValidationError::new("resource", format!("{raw:?} {reason}")));
        if raw.len() > 2048 {
            return bad("is longer than 2048 bytes");
        }
        if raw.contains('#') {
            return bad("must not contain a fragment");
        }
        let Some((scheme, rest)) = raw.split_once("://") else {
            return bad("must be an absolute URI");
        };
        let scheme_ok = scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok || rest.is_empty() {
            return bad("must be an absolute URI");
        }
        if raw.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return bad("must not contain spaces or control characters");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceUri {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ResourceUri> for String {
    fn from(value: ResourceUri) -> Self {
        value.0
    }
}

impl fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_spiffe_path_rules() {
        assert!(Name::parse("billing-bot.v2_a").is_ok());
        for bad in ["", "Bot", "-bot", "bot/x", "bot x", &"a".repeat(64)] {
            assert!(Name::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn agent_names_are_read_only_from_this_trust_domains_agent_paths() {
        let td = TrustDomain::parse("mandate.local").expect("valid");
        assert_eq!(td.agent_name("spiffe://mandate.local/agent/bot"), Some("bot"));
        for other in [
            "spiffe://mandate.localx/agent/bot",
            "spiffe://other.local/agent/bot",
            "spiffe://mandate.local/gateway",
            "mandate.local/agent/bot",
            "alice",
        ] {
            assert_eq!(td.agent_name(other), None, "{other}");
        }
    }

    #[test]
    fn agent_spiffe_id_has_the_documented_shape() {
        let td = TrustDomain::parse("example.org").expect("valid");
        let name = Name::parse("bot").expect("valid");
        assert_eq!(td.agent_id(&name).as_str(), "spiffe://example.org/agent/bot");
        assert!(TrustDomain::parse("Example.org").is_err());
        assert!(TrustDomain::parse("").is_err());
    }

    #[test]
    fn resource_uris_must_be_absolute_without_fragment() {
        assert!(ResourceUri::parse("https://api.example.com/v1").is_ok());
        assert!(ResourceUri::parse("urn:x").is_err());
        for bad in ["api.example.com", "https://a.example/#frag", "https://", "://x", "https://a b"] {
            assert!(ResourceUri::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
