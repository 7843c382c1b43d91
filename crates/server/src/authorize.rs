//! `GET /oauth2/authorize` and `POST /oauth2/authorize/decision`: query and form parsing, the
//! `mandate_session` cookie, and rendering `authz::authorize` steps as server-side pages
//! (askama, no scripts) or 303 redirects. Every answer carries strict headers: no scripts, no
//! framing, no caching, referrer only to this site.

use std::collections::BTreeSet;

use askama::Template;
use askama_web::WebTemplate;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_authz::authorize::{
    AuthorizeParams, DecisionForm, Interaction, SCOPE_OFFLINE_ACCESS, SCOPE_OPENID, Step, authorize as begin, decide,
};
use mandate_authz::record_refusal;
use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode};
use zeroize::Zeroizing;

use crate::AppState;
use crate::reply::{Form, correlation_id, with_request_id};

/// The session cookie: 256 random bits, stored hashed server-side.
pub(crate) const SESSION_COOKIE: &str = "mandate_session";
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'";

pub(crate) async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let correlation = correlation_id(&headers);
    let params = parse_params(query.as_deref().unwrap_or_default());
    let session = session_cookie(&headers);
    let step = begin(&state.authz, &state.interactions, params, session.as_deref(), &correlation).await;
    with_request_id(render(&state, step, None), &correlation)
}

pub(crate) async fn decision(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let correlation = correlation_id(&headers);
    let response = match read_decision(&state, &headers, body, &correlation).await {
        Err(step) => render(&state, step, None),
        Ok(form) => {
            let session = session_cookie(&headers);
            let decided = decide(&state.authz, &state.interactions, form, session.as_deref(), &correlation).await;
            render(&state, decided.step, decided.new_session)
        }
    };
    with_request_id(response, &correlation)
}

/// The decision form, from this site only: a browser posting it from another site (login
/// CSRF) is refused by its `Origin` / `Sec-Fetch-Site`, and malformed forms are audited.
async fn read_decision(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    correlation: &str,
) -> Result<DecisionForm, Step> {
    let event = || AuditEvent::allow("authorize.decision", correlation);
    if is_cross_site(headers, &state.authz.config.issuer) {
        let error = OAuthError::new(OAuthErrorCode::AccessDenied, "the form was posted from another site");
        return Err(Step::Error(record_refusal(&state.authz, event(), error).await));
    }
    let mut form = match Form::read(headers, body).await {
        Ok(form) => form,
        Err(reply) => return Err(Step::Error(record_refusal(&state.authz, event(), reply.error).await)),
    };
    Ok(DecisionForm {
        request_id: form.take("request_id"),
        csrf: form.take("csrf"),
        decision: form.take("decision"),
        owner: form.take("owner"),
        password: form.take("password").map(Zeroizing::new),
    })
}

/// Parameters of the authorization request. Empty values count as absent (RFC 6749 §3.1);
/// repeats are recorded for `authz` to refuse.
fn parse_params(query: &str) -> AuthorizeParams {
    let mut params = AuthorizeParams::default();
    let mut seen = BTreeSet::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if value.is_empty() {
            continue;
        }
        if name != "resource" && !seen.insert(name.to_string()) {
            params.repeated.push(name.into_owned());
            continue;
        }
        let value = Some(value.into_owned());
        match name.as_ref() {
            "client_id" => params.client_id = value,
            "redirect_uri" => params.redirect_uri = value,
            "response_type" => params.response_type = value,
            "response_mode" => params.response_mode = value,
            "state" => params.state = value,
            "scope" => params.scope = value,
            "code_challenge" => params.code_challenge = value,
            "code_challenge_method" => params.code_challenge_method = value,
            "resource" => params.resources.extend(value),
            "prompt" => params.prompt = value,
            "nonce" => params.nonce = value,
            "dpop_jkt" => params.dpop_jkt = value,
            _ => {}
        }
    }
    params
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, SESSION_COOKIE)
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub(crate) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value.to_owned())
}

/// A browser tells where a form came from: `Sec-Fetch-Site` (modern browsers) and `Origin`
/// (sent with every cross-origin POST). Clients that are not browsers send neither.
pub(crate) fn is_cross_site(headers: &HeaderMap, issuer: &str) -> bool {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if value("sec-fetch-site").is_some_and(|site| site == "cross-site") {
        return true;
    }
    let own = url::Url::parse(issuer).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
    value("origin").is_some_and(|origin| origin != own)
}

fn render(state: &AppState, step: Step, new_session: Option<String>) -> Response {
    let mut response = match step {
        Step::Redirect(location) => redirect(&location),
        Step::SignIn(interaction) => SignInPage { page: Page::new(&interaction) }.into_response(),
        Step::Consent(interaction) => ConsentPage { page: Page::new(&interaction) }.into_response(),
        Step::Error(error) => error_page(&error),
    };
    if let Some(cookie) = new_session {
        let secure = if state.authz.config.issuer.starts_with("https://") { "; Secure" } else { "" };
        let max_age = mandate_authz::authorize::SESSION_TTL_MS / 1000;
        let value =
            format!("{SESSION_COOKIE}={cookie}; HttpOnly; SameSite=Lax; Path=/oauth2; Max-Age={max_age}{secure}");
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    strict_headers(response)
}

fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) if !location.is_empty() => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        _ => error_page(&OAuthError::server_error("the redirect URI cannot carry the response")),
    }
}

pub(crate) fn error_page(error: &OAuthError) -> Response {
    let status = match error.code {
        OAuthErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        OAuthErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        OAuthErrorCode::AccessDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    let page = ErrorPage { code: error.code.as_str(), description: &error.description };
    (status, page).into_response()
}

/// Headers of every sign-in, consent and approval page. The referrer policy is `same-origin`,
/// not `no-referrer`: under `no-referrer` a browser posts the page's form with `Origin: null`,
/// which the cross-site check must refuse, so no real browser could submit it. Under
/// `same-origin` the page's URL (state, PKCE challenge, approval id) still never leaves this site.
pub(crate) fn strict_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// What the sign-in and consent pages show, flattened for the templates.
struct Page<'a> {
    request_id: &'a str,
    csrf: &'a str,
    client_title: &'a str,
    client_id: &'a str,
    client_host: Option<&'a str>,
    redirect_host: &'a str,
    agent: Option<String>,
    resource: &'a str,
    scopes: Vec<ScopeLine<'a>>,
    owner: Option<&'a str>,
    notice: Option<&'a str>,
}

struct ScopeLine<'a> {
    name: &'a str,
    meaning: &'static str,
}

impl<'a> Page<'a> {
    fn new(interaction: &'a Interaction) -> Self {
        let view = &interaction.view;
        Self {
            request_id: &interaction.request_id,
            csrf: &interaction.csrf,
            client_title: view.client_name.as_deref().unwrap_or(&view.client_id),
            client_id: &view.client_id,
            client_host: view.client_host.as_deref(),
            redirect_host: &view.redirect_host,
            agent: view.agent.as_ref().map(|(agent, owner)| format!("{agent} (owned by {owner})")),
            resource: &view.resource,
            scopes: view.scopes.iter().map(|name| ScopeLine { name, meaning: meaning(name) }).collect(),
            owner: view.owner.as_deref(),
            notice: interaction.notice.as_deref(),
        }
    }
}

fn meaning(scope: &str) -> &'static str {
    match scope {
        SCOPE_OPENID => "confirm who you are to the application",
        SCOPE_OFFLINE_ACCESS => "keep access while you are away",
        _ => "",
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    page: Page<'a>,
}

#[derive(Template, WebTemplate)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    page: Page<'a>,
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    code: &'a str,
    description: &'a str,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_parsed_and_repeats_recorded() {
        let params = parse_params(
            "client_id=app&redirect_uri=https%3A%2F%2Fa.example%2Fcb&resource=r1&resource=r2&state=&scope=a+b&scope=c",
        );
        assert_eq!(params.client_id.as_deref(), Some("app"));
        assert_eq!(params.redirect_uri.as_deref(), Some("https://a.example/cb"));
        assert_eq!(params.resources, ["r1", "r2"]);
        assert_eq!(params.state, None, "an empty value is an absent one");
        assert_eq!(params.scope.as_deref(), Some("a b"));
        assert_eq!(params.repeated, ["scope"]);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; mandate_session=abc; b=2"));
        assert_eq!(session_cookie(&headers).as_deref(), Some("abc"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let issuer = "https://as.example:8443";
        let with = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            headers
        };
        assert!(!is_cross_site(&HeaderMap::new(), issuer));
        assert!(!is_cross_site(&with("origin", "https://as.example:8443"), issuer));
        assert!(is_cross_site(&with("origin", "https://evil.example"), issuer));
        assert!(is_cross_site(&with("origin", "null"), issuer));
        assert!(is_cross_site(&with("sec-fetch-site", "cross-site"), issuer));
        assert!(!is_cross_site(&with("sec-fetch-site", "same-origin"), issuer));
    }

    #[test]
    fn pages_escape_what_clients_control() {
        let interaction = Interaction {
            request_id: "rid".into(),
            csrf: "tok".into(),
            view: mandate_authz::authorize::RequestView {
                client_id: "app".into(),
                client_name: Some("<script>alert(1)</script>".into()),
                client_host: None,
                redirect_host: "app.example".into(),
                agent: None,
                resource: "https://api.example".into(),
                scopes: vec!["openid".into(), "read".into()],
                owner: Some("alice".into()),
            },
            notice: None,
        };
        let html = ConsentPage { page: Page::new(&interaction) }.render().unwrap();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"), "{html}");
        for field in
            ["name=\"request_id\" value=\"rid\"", "name=\"csrf\" value=\"tok\"", "value=\"approve\"", "value=\"deny\""]
        {
            assert!(html.contains(field), "missing {field}");
        }
        let html = SignInPage { page: Page::new(&interaction) }.render().unwrap();
        for field in ["name=\"owner\"", "name=\"password\"", "name=\"decision\" value=\"login\""] {
            assert!(html.contains(field), "missing {field}");
        }
    }
}
