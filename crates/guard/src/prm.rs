//! OAuth 2.0 Protected Resource Metadata (RFC 9728) for a guarded resource, and where it lives.

use serde_json::{Value, json};

use crate::dpop::SUPPORTED_ALGS;
use crate::verify::GuardConfig;

/// The metadata document: `resource`, `authorization_servers`, `scopes_supported`,
/// `bearer_methods_supported` (header only: tokens never travel in query strings) and the DPoP
/// proof algorithms accepted (RFC 9449 §7.3), plus `dpop_bound_access_tokens_required` when set.
pub fn protected_resource_metadata(config: &GuardConfig) -> Value {
    let mut doc = json!({
        "resource": config.resource,
        "authorization_servers": config.issuers,
        "scopes_supported": config.scopes_supported,
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": SUPPORTED_ALGS,
    });
    if let Some(obj) = doc.as_object_mut() {
        if let Some(name) = &config.resource_name {
            obj.insert("resource_name".into(), Value::String(name.clone()));
        }
        if config.dpop_bound_access_tokens_required {
            obj.insert("dpop_bound_access_tokens_required".into(), Value::Bool(true));
        }
    }
    doc
}

/// The well-known metadata URL for a resource identifier (RFC 9728 §3.1).
pub fn metadata_url(resource: &str) -> Option<String> {
    well_known_url(resource, "oauth-protected-resource")
}

/// `/.well-known/{name}` for an identifier, inserted between the host and the identifier's path
/// as RFC 8414 §3.1 and RFC 9728 §3.1 both ask (for a path-less identifier, simply appended).
pub fn well_known_url(identifier: &str, name: &str) -> Option<String> {
    let (scheme, rest) = identifier.split_once("://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let path = path.trim_end_matches('/');
    let suffix = if path.is_empty() { String::new() } else { format!("/{path}") };
    Some(format!("{scheme}://{authority}/.well-known/{name}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_url_inserts_the_well_known_path() {
        assert_eq!(
            metadata_url("https://r.example/resource1").as_deref(),
            Some("https://r.example/.well-known/oauth-protected-resource/resource1")
        );
        assert_eq!(
            metadata_url("https://r.example/").as_deref(),
            Some("https://r.example/.well-known/oauth-protected-resource")
        );
        assert_eq!(
            metadata_url("http://127.0.0.1:9000").as_deref(),
            Some("http://127.0.0.1:9000/.well-known/oauth-protected-resource")
        );
        assert_eq!(metadata_url("not a url"), None);
        assert_eq!(
            well_known_url("https://as.example/tenant1", "oauth-authorization-server").as_deref(),
            Some("https://as.example/.well-known/oauth-authorization-server/tenant1")
        );
    }
}
