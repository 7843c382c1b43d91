//! Header rewriting for one request: placeholder detection, substitution of the chosen
//! connection's credential, the optional injected header, and the hop-by-hop / proxy headers
//! that never cross the broker. Only header values are substituted; bodies and query strings
//! pass unchanged.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use super::rules::{PLACEHOLDER_PREFIX, Rule};

/// The request header choosing a connection (`github:personal`); never forwarded.
pub const CONNECTION_HEADER: HeaderName = HeaderName::from_static("mandate-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The headers [`strip_hop_by_hop`] removes by name (those named by `Connection` come on top).
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    header::TE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    CONNECTION_HEADER,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The credential contains bytes a header value cannot carry.
    #[error("the credential of connection {0:?} cannot be sent in a header")]
    NotAHeaderValue(String),
}

/// Whether any header value still holds a placeholder once `known` (the rule's own, if any) is
/// set aside: such a request would leak a placeholder upstream or name a credential the broker
/// cannot resolve, so it is refused.
pub fn has_unknown_placeholder(headers: &HeaderMap, known: Option<&str>) -> bool {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    headers.values().any(|value| {
        let bytes = value.as_bytes();
        match known {
            // Removing `known` can also join two halves of a prefix, hence the removal.
            Some(known) if contains(bytes, known.as_bytes()) => contains(&remove_all(bytes, known.as_bytes()), prefix),
            _ => contains(bytes, prefix),
        }
    })
}

/// Whether the request needs the credential: a header holds the rule's placeholder, or the
/// rule injects a header the agent did not send.
pub fn needs_credential(headers: &HeaderMap, rule: &Rule) -> bool {
    let placeholder = rule.placeholder.as_bytes();
    headers.values().any(|v| contains(v.as_bytes(), placeholder))
        || rule.inject.as_ref().is_some_and(|inject| !headers.contains_key(inject.header.as_str()))
}

/// Replaces every occurrence of the rule's placeholder with `credential`, then sets the rule's
/// injected header if the agent sent none. Returns how many header values now carry the
/// credential. Values carrying it are marked sensitive (never HPACK-indexed).
pub fn substitute(
    headers: &mut HeaderMap,
    rule: &Rule,
    connection: &str,
    credential: &str,
) -> Result<usize, InjectError> {
    let placeholder = rule.placeholder.as_bytes();
    let mut replaced = 0;
    for value in headers.values_mut() {
        if !contains(value.as_bytes(), placeholder) {
            continue;
        }
        let text = Zeroizing::new(replace_all(value.as_bytes(), placeholder, credential.as_bytes()));
        *value = sensitive_value(&text).ok_or_else(|| InjectError::NotAHeaderValue(connection.to_owned()))?;
        replaced += 1;
    }
    if let Some(inject) = &rule.inject
        && !headers.contains_key(inject.header.as_str())
    {
        let name = HeaderName::from_bytes(inject.header.as_bytes())
            .map_err(|_| InjectError::NotAHeaderValue(connection.to_owned()))?;
        let text = Zeroizing::new(inject.format.replace("{credential}", credential).into_bytes());
        let value = sensitive_value(&text).ok_or_else(|| InjectError::NotAHeaderValue(connection.to_owned()))?;
        headers.insert(name, value);
        replaced += 1;
    }
    Ok(replaced)
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), everything named by
/// `Connection`, the proxy's own `Proxy-*` headers and `Mandate-Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names instead of a lookup per name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // `TE: trailers` is end-to-end in practice (gRPC needs it over HTTP/2); any other TE is not.
    let trailers_only = headers.get_all(header::TE).iter().all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_only {
        headers.remove(header::TE);
    }
    for name in HOP_BY_HOP.iter().filter(|name| *name != header::TE) {
        headers.remove(name);
    }
}

fn sensitive_value(bytes: &[u8]) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_bytes(bytes).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn remove_all(haystack: &[u8], needle: &[u8]) -> Vec<u8> {
    replace_all(haystack, needle, b"")
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut rest = haystack;
    while !needle.is_empty() && rest.len() >= needle.len() {
        if rest.starts_with(needle) {
            out.extend_from_slice(with);
            rest = &rest[needle.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::rules::Rules;
    use super::*;

    fn rule(extra: &str) -> Rule {
        let rules = Rules::parse(&format!("[[rule]]\nhost = \"h\"\nconnection = \"github:work\"\n{extra}")).unwrap();
        rules.rules()[0].clone()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn every_occurrence_in_every_header_is_replaced() {
        let rule = rule("");
        let mut map = headers(&[
            ("authorization", "Bearer MANDATE_PLACEHOLDER_GITHUB_WORK"),
            ("x-api-key", "MANDATE_PLACEHOLDER_GITHUB_WORK:MANDATE_PLACEHOLDER_GITHUB_WORK"),
            ("accept", "application/json"),
        ]);
        assert!(needs_credential(&map, &rule));
        assert_eq!(substitute(&mut map, &rule, "github:work", "s3cr3t").unwrap(), 2);
        assert_eq!(map["authorization"], "Bearer s3cr3t");
        assert_eq!(map["x-api-key"], "s3cr3t:s3cr3t");
        assert!(map["authorization"].is_sensitive());
        assert_eq!(map["accept"], "application/json");
    }

    #[test]
    fn the_injected_header_is_added_only_when_absent() {
        let rule = rule("inject = { header = \"Authorization\", format = \"token {credential}\" }");
        let mut map = headers(&[]);
        assert!(needs_credential(&map, &rule));
        substitute(&mut map, &rule, "github:work", "abc").unwrap();
        assert_eq!(map["authorization"], "token abc");
        let mut own = headers(&[("authorization", "Basic xyz")]);
        assert!(!needs_credential(&own, &rule));
        substitute(&mut own, &rule, "github:work", "abc").unwrap();
        assert_eq!(own["authorization"], "Basic xyz");
    }

    #[test]
    fn unknown_placeholders_are_detected() {
        let map = headers(&[("authorization", "Bearer MANDATE_PLACEHOLDER_GITHUB_PERSONAL")]);
        assert!(has_unknown_placeholder(&map, Some("MANDATE_PLACEHOLDER_GITHUB_WORK")));
        assert!(has_unknown_placeholder(&map, None));
        let known = headers(&[("authorization", "Bearer MANDATE_PLACEHOLDER_GITHUB_WORK")]);
        assert!(!has_unknown_placeholder(&known, Some("MANDATE_PLACEHOLDER_GITHUB_WORK")));
        assert!(has_unknown_placeholder(&known, None));
        // A placeholder glued to the known one is still unknown.
        let glued = headers(&[("x", "MANDATE_PLACEHOLDER_GITHUB_WORKMANDATE_PLACEHOLDER_X")]);
        assert!(has_unknown_placeholder(&glued, Some("MANDATE_PLACEHOLDER_GITHUB_WORK")));
        // So is a prefix split around the known one, and one in another header.
        let split = headers(&[("x", "MANDATE_PLACEXYZ_TOKEN_1HOLDER_A")]);
        assert!(has_unknown_placeholder(&split, Some("XYZ_TOKEN_1")));
        let other = headers(&[("a", "Bearer MANDATE_PLACEHOLDER_GITHUB_WORK"), ("b", "MANDATE_PLACEHOLDER_OTHER")]);
        assert!(has_unknown_placeholder(&other, Some("MANDATE_PLACEHOLDER_GITHUB_WORK")));
        assert!(!has_unknown_placeholder(&headers(&[("a", "plain")]), Some("MANDATE_PLACEHOLDER_GITHUB_WORK")));
    }

    #[test]
    fn a_credential_that_is_not_a_header_value_is_refused() {
        let rule = rule("");
        let mut map = headers(&[("authorization", "Bearer MANDATE_PLACEHOLDER_GITHUB_WORK")]);
        assert_eq!(
            substitute(&mut map, &rule, "github:work", "line\nbreak"),
            Err(InjectError::NotAHeaderValue("github:work".into()))
        );
    }

    #[test]
    fn hop_by_hop_and_proxy_headers_are_stripped() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("mandate-connection", "github:personal"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("authorization", "Bearer x"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1);
        assert_eq!(map["authorization"], "Bearer x");
        let mut grpc = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut grpc);
        assert_eq!(grpc["te"], "trailers");
        // Each one alone is found too (the pass that skips messages without any).
        for name in ["connection", "te", "keep-alive", "proxy-connection", "mandate-connection", "transfer-encoding"] {
            let mut one = headers(&[(name, "x"), ("accept", "*/*")]);
            strip_hop_by_hop(&mut one);
            assert_eq!(one.len(), 1, "{name}");
        }
        let mut clean = headers(&[("accept", "*/*"), ("authorization", "Bearer x")]);
        strip_hop_by_hop(&mut clean);
        assert_eq!(clean.len(), 2);
    }
}
