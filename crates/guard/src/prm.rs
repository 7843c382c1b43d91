//! OAuth 2.0 Protected Resource Metadata (RFC 9728) for a guarded resource, and where it lives.

use serde_json::{Value, json};

use crate::verify::GuardConfig;

/// The metadata document: `resource`, `authorization_servers`, `scopes_supported`,
/// `bearer_methods_supported` (header only: tokens never travel in query strings).
pub fn protected_resource_metadata(config: &GuardConfig) -> Value {
    let mut doc = json!({
        "resource": config.resource,
        "authorization_servers": config.issuers,
        "scopes_supported": config.scopes_supported,
        "bearer_methods_supported": ["header"],
    });
    if let (Some(name), Some(obj)) = (&config.resource_name, doc.as_object_mut()) {
        obj.insert("resource_name".into(), Value::String(name.clone()));
    }
    doc
}

/// The well-known metadata URL for a resource identifier (RFC 9728 §3.1): the well-known path is
/// inserted between the host and the resource's path.
pub fn metadata_url(resource: &str) -> Option<String> {
    let (scheme, rest) = resource.split_once("://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let path = path.trim_end_matches('/');
    let suffix = if path.is_empty() { String::new() } else { format!("/{path}") };
    Some(format!("{scheme}://{authority}/.well-known/oauth-protected-resource{suffix}"))
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
    }
}
