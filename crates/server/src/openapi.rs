//! The admin API's OpenAPI 3.1 document, served at `/admin/api/v1/openapi.json`. It is written by
//! hand (`openapi/admin.json`) and kept complete by a test that compares its paths and methods
//! with the routes the admin modules register; schemathesis checks it against a running server.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, embedded at build time.
const DOCUMENT: &str = include_str!("../openapi/admin.json");

/// `GET /admin/api/v1/openapi.json`: public, like discovery metadata; the document describes
/// the API's shape and holds no data.
pub(crate) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::*;

    /// The admin modules' sources: every route they register must be in the document.
    const ADMIN_SOURCES: &[&str] = &[
        include_str!("admin.rs"),
        include_str!("admin_trust.rs"),
        include_str!("admin_policy.rs"),
        include_str!("admin_audit.rs"),
    ];
    const METHODS: &[&str] = &["get", "post", "put", "delete", "patch"];

    /// `.route("/path", get(a).post(b))` calls in `source`: path → methods.
    fn registered_routes(source: &str, routes: &mut BTreeMap<String, BTreeSet<String>>) {
        for (at, _) in source.match_indices(".route(\"") {
            let rest = &source[at + ".route(\"".len()..];
            let Some(path_end) = rest.find('"') else { continue };
            let path = &rest[..path_end];
            // The route's method router runs to the parenthesis closing `.route(`.
            let mut depth = 1usize;
            let call = &rest[path_end..];
            let end = call
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            let methods = routes.entry(path.to_owned()).or_default();
            for method in METHODS {
                let needle = format!("{method}(");
                let called = call[..end].match_indices(&needle).any(|(i, _)| {
                    call[..i].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
                });
                if called {
                    methods.insert((*method).to_owned());
                }
            }
        }
    }

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).unwrap()
    }

    #[test]
    fn every_admin_route_and_method_is_documented() {
        let mut routes = BTreeMap::new();
        for source in ADMIN_SOURCES {
            registered_routes(source, &mut routes);
        }
        assert!(routes.len() >= 20, "the route scan found too little: {routes:?}");
        let doc = document();
        for (path, methods) in &routes {
            let documented = doc["paths"][path].as_object().unwrap_or_else(|| panic!("{path} is not documented"));
            for method in methods {
                assert!(documented.contains_key(method), "{method} {path} is not documented");
            }
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            if path == "/openapi.json" {
                continue;
            }
            let registered = routes.get(path).unwrap_or_else(|| panic!("{path} is documented but not served"));
            for method in item.as_object().unwrap().keys().filter(|k| METHODS.contains(&k.as_str())) {
                assert!(registered.contains(method), "{method} {path} is documented but not served");
            }
        }
    }

    #[test]
    fn the_route_scan_sees_chained_and_qualified_methods() {
        let mut routes = BTreeMap::new();
        registered_routes(
            r#".route("/a", get(get_a).delete(delete_a)) .route("/b", axum::routing::put(set_b)) .route("/a", post(x))"#,
            &mut routes,
        );
        assert_eq!(routes["/a"], ["delete", "get", "post"].map(str::to_owned).into());
        assert_eq!(routes["/b"], ["put"].map(str::to_owned).into());
    }

    /// Every `$ref` points at a component that exists, and every operation is protected by
    /// the admin credential except the document itself.
    #[test]
    fn references_resolve_and_operations_need_the_admin_credential() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
        fn refs(value: &Value, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        out.push(target.clone());
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut targets = Vec::new();
        refs(&doc, &mut targets);
        assert!(!targets.is_empty());
        for target in targets {
            let pointer = target.strip_prefix('#').unwrap();
            assert!(doc.pointer(pointer).is_some(), "dangling reference {target}");
        }
        assert_eq!(doc["security"][0]["adminBearer"], Value::Array(vec![]));
        assert_eq!(doc["paths"]["/openapi.json"]["get"]["security"], Value::Array(vec![]));
    }
}
