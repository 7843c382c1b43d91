//! Which request and response headers cross the gateway. Hop-by-hop headers (RFC 9110 §7.6.1)
//! belong to one connection; the inbound credentials must never reach the upstream.

use axum::http::{HeaderMap, HeaderName, header};

/// Hop-by-hop headers, always dropped (plus any the `Connection` header names).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Credentials of the inbound hop: the access token, its DPoP proof, and any `Txn-Token` a
/// client sent itself (only the gateway's own may reach the upstream). Cookies are kept: they
/// are the upstream's own session state, not Mandate credentials.
const INBOUND_CREDENTIALS: &[&str] = &["authorization", "dpop", "txn-token"];

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The request headers as the upstream may see them: no hop-by-hop headers, no inbound
/// credentials, and no `Host` (the client sets the upstream's).
pub fn upstream_request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for name in INBOUND_CREDENTIALS {
        headers.remove(*name);
    }
    headers.remove(header::HOST);
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_are_dropped_cookies_kept() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "DPoP abc"),
            ("dpop", "proof"),
            ("txn-token", "forged"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "gateway.example"),
            ("cookie", "session=1"),
            ("accept", "text/event-stream"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        upstream_request_headers(&mut headers);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "cookie"]);
    }
}
