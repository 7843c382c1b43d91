//! The web console at `/ui`: server-rendered pages (askama, plain forms, no scripts) for owners
//! (their agents, delegations, approvals, audit trail, kill switch) and the administrator (all
//! of it, read-only approvals). Pages read through the store, `audit::query` and `authz`.

mod agents;
mod approvals;
mod audit;
mod graph;
mod owners;
mod resources;
mod revoke;
mod session;
mod verify;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode};
use zeroize::Zeroizing;

pub use session::Sessions;
use session::{Session, Who};

use crate::AppState;
use crate::authorize::{is_cross_site, strict_headers};
use crate::reply::{Form, correlation_id, with_request_id};

/// The console's cookie (path `/ui` only, so the OAuth pages never see it).
const COOKIE: &str = "mandate_ui";
/// Pages load only their own stylesheet and the graph image; forms post only here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                                       frame-ancestors 'none'; base-uri 'none'";
const STYLESHEET: &str = include_str!("../../templates/ui/ui.css");

/// The console's per-process state: sessions and the audit log's verified prefix.
#[derive(Default)]
pub struct Console {
    sessions: Sessions,
    verified: verify::VerifiedLog,
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/ui.css", get(stylesheet))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/agents", get(agents::list))
        .route("/agents/{name}", get(agents::detail))
        .route("/owners", get(owners::page))
        .route("/resources", get(resources::page))
        .route("/approvals", get(approvals::page))
        .route("/approvals/{approval_id}", post(approvals::decide))
        .route("/audit", get(audit::page))
        .route("/graph", get(graph::page))
        .route("/graph.svg", get(graph::svg))
        .route("/revoke", get(revoke::confirm).post(revoke::revoke))
}

/// A signed-in request: who it is, their session's CSRF token, and the request's correlation id.
pub(crate) struct Viewer {
    pub who: Who,
    pub session: Session,
    pub correlation: String,
}

impl Viewer {
    /// The navigation bar every page shows.
    pub(crate) fn chrome(&self) -> Chrome {
        Chrome { signed_in_as: self.who.label(), admin: self.who == Who::Admin, csrf: self.session.csrf.clone() }
    }

    pub(crate) fn owner(&self) -> Option<&str> {
        match &self.who {
            Who::Admin => None,
            Who::Owner(name) => Some(name),
        }
    }
}

/// Without a live session, every console page sends the browser to the sign-in page.
impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let now_ms = state.authz.clock.now_ms();
        let session = crate::authorize::cookie_value(&parts.headers, COOKIE)
            .and_then(|value| state.console.sessions.get(&value, now_ms));
        match session {
            Some(session) => {
                Ok(Viewer { who: session.who.clone(), session, correlation: correlation_id(&parts.headers) })
            }
            None => Err(page(Redirect::to("/ui/login").into_response())),
        }
    }
}

/// What the layout needs: who is signed in, and the CSRF token of the sign-out form.
pub(crate) struct Chrome {
    pub signed_in_as: String,
    pub admin: bool,
    pub csrf: String,
}

/// Every console answer: the strict headers of the authorization pages, with a CSP that allows
/// the console's own stylesheet and image (still no scripts, no framing).
pub(crate) fn page(response: Response) -> Response {
    let mut response = strict_headers(response);
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    response
}

/// A page that only says something (errors, confirmations).
#[derive(Template, WebTemplate)]
#[template(path = "ui/message.html")]
pub(crate) struct MessagePage {
    pub chrome: Option<Chrome>,
    pub title: String,
    pub text: String,
    pub error: bool,
}

pub(crate) fn message(viewer: Option<&Viewer>, status: StatusCode, title: &str, text: &str) -> Response {
    let body = MessagePage {
        chrome: viewer.map(Viewer::chrome),
        title: title.to_owned(),
        text: text.to_owned(),
        error: !status.is_success(),
    };
    page((status, body).into_response())
}

pub(crate) fn not_found(viewer: &Viewer, what: &str) -> Response {
    message(Some(viewer), StatusCode::NOT_FOUND, "Not found", &format!("There is no {what} you can see."))
}

pub(crate) fn unavailable(viewer: &Viewer, error: &OAuthError) -> Response {
    let status = StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    message(Some(viewer), status, "Something went wrong", &error.description)
}

fn set_cookie(state: &AppState, response: &mut Response, value: &str, max_age_secs: i64) {
    let secure = if state.authz.config.issuer.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={max_age_secs}{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

/// A console form post: from this site, well-formed, and carrying the session's CSRF token.
/// Anything else is refused (audited under `action`) and changes nothing.
pub(crate) async fn read_post(
    state: &AppState,
    viewer: &Viewer,
    headers: &HeaderMap,
    body: Body,
    action: &str,
) -> Result<Form, Response> {
    let denied = |why: &str| OAuthError::new(OAuthErrorCode::AccessDenied, why);
    let error = if is_cross_site(headers, &state.authz.config.issuer) {
        denied("the form was posted from another site")
    } else {
        match Form::read(headers, body).await {
            Err(reply) => reply.error,
            Ok(mut form) => {
                if viewer.session.csrf_matches(form.take("csrf").as_deref()) {
                    return Ok(form);
                }
                denied("the form's CSRF token is missing or wrong")
            }
        }
    };
    let mut event = AuditEvent::allow(action, &viewer.correlation);
    describe_viewer(&mut event, &viewer.who);
    let error = mandate_authz::record_refusal(&state.authz, event, error).await;
    let status =
        if error.code == OAuthErrorCode::AccessDenied { StatusCode::FORBIDDEN } else { StatusCode::BAD_REQUEST };
    Err(message(Some(viewer), status, "Refused", &error.description))
}

/// Names the console user in an audit event: an owner as `owner`, the administrator in `detail`.
pub(crate) fn describe_viewer(event: &mut AuditEvent, who: &Who) {
    match who {
        Who::Owner(name) => event.owner = Some(name.clone()),
        Who::Admin => event.detail = Some("console user: admin".to_owned()),
    }
}

/// Records a console refusal and shows it; nothing changed.
pub(crate) async fn refuse(state: &AppState, viewer: &Viewer, event: AuditEvent, why: &str) -> Response {
    let error = OAuthError::new(OAuthErrorCode::AccessDenied, why);
    let error = mandate_authz::record_refusal(&state.authz, event, error).await;
    message(Some(viewer), StatusCode::FORBIDDEN, "Refused", &error.description)
}

async fn home(viewer: Result<Viewer, Response>) -> Response {
    match viewer {
        Ok(_) => page(Redirect::to("/ui/agents").into_response()),
        Err(to_login) => to_login,
    }
}

async fn stylesheet() -> Response {
    let mut response = STYLESHEET.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    page(response)
}

#[derive(Template, WebTemplate)]
#[template(path = "ui/login.html")]
struct LoginPage<'a> {
    notice: Option<&'a str>,
}

async fn login_page() -> Response {
    page(LoginPage { notice: None }.into_response())
}

fn login_refused(status: StatusCode, notice: &str) -> Response {
    page((status, LoginPage { notice: Some(notice) }).into_response())
}

/// Longest sign-in name kept (in the audit event and the lockout map).
const MAX_NAME_CHARS: usize = 128;
const WRONG_CREDENTIALS: &str = "wrong name, password or credential";

/// Signs in an owner (name and password) or the administrator (the admin credential). Every
/// attempt is audited as `ui.login` (never with the password); five consecutive failures for
/// one name lock it out for a while.
async fn login(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let correlation = correlation_id(&headers);
    let mut event = AuditEvent::allow("ui.login", &correlation);
    let refused = |event: AuditEvent, why: &str| {
        let error = OAuthError::new(OAuthErrorCode::AccessDenied, why);
        async { mandate_authz::record_refusal(&state.authz, event, error).await }
    };
    if is_cross_site(&headers, &state.authz.config.issuer) {
        let error = refused(event, "the form was posted from another site").await;
        return with_request_id(login_refused(StatusCode::FORBIDDEN, &error.description), &correlation);
    }
    let mut form = match Form::read(&headers, body).await {
        Ok(form) => form,
        Err(reply) => {
            let error = mandate_authz::record_refusal(&state.authz, event, reply.error).await;
            return with_request_id(login_refused(StatusCode::BAD_REQUEST, &error.description), &correlation);
        }
    };
    let now_ms = state.authz.clock.now_ms();
    let admin = form.take("kind").as_deref() == Some("admin");
    let owner = form.take("owner").unwrap_or_default();
    let lock_name = if admin {
        event.detail = Some("console user: admin".into());
        "admin".to_owned()
    } else {
        // Owner names are short; a longer one is no owner, and the bound keeps the map small.
        let bounded: String = owner.chars().take(MAX_NAME_CHARS).collect();
        event.owner = Some(bounded.clone()).filter(|n| !n.is_empty());
        format!("owner:{bounded}")
    };
    if state.console.sessions.locked_out(&lock_name, now_ms) {
        let error = refused(event, "too many failed sign-ins for this name; try again later").await;
        return with_request_id(login_refused(StatusCode::TOO_MANY_REQUESTS, &error.description), &correlation);
    }
    let who = if admin {
        let credential = Zeroizing::new(form.take("credential").unwrap_or_default());
        state.is_admin_token(&credential).then_some(Who::Admin)
    } else {
        let password = Zeroizing::new(form.take("password").unwrap_or_default());
        // Unknown owners cost a dummy verification too (see `verify_owner_password`).
        match mandate_authz::password::verify_owner_password(&state.authz, &owner, password).await {
            Ok(verified) => verified.map(|owner| Who::Owner(owner.name.to_string())),
            Err(error) => {
                let error = mandate_authz::record_refusal(&state.authz, event, error).await;
                return with_request_id(
                    login_refused(StatusCode::SERVICE_UNAVAILABLE, &error.description),
                    &correlation,
                );
            }
        }
    };
    let Some(who) = who else {
        let failures = state.console.sessions.record_failure(&lock_name, now_ms);
        let error = refused(event, &format!("{WRONG_CREDENTIALS} (attempt {failures})")).await;
        let status = if error.code == OAuthErrorCode::AccessDenied {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return with_request_id(login_refused(status, WRONG_CREDENTIALS), &correlation);
    };
    state.console.sessions.clear_failures(&lock_name);
    describe_viewer(&mut event, &who);
    if let Err(e) = state.authz.log.record(event).await {
        tracing::error!(error = %e, "audit append failed");
        return with_request_id(
            login_refused(StatusCode::SERVICE_UNAVAILABLE, "the audit log is unavailable; nothing was done"),
            &correlation,
        );
    }
    let (cookie, _) = state.console.sessions.create(who, now_ms);
    let mut response = page(Redirect::to("/ui/agents").into_response());
    set_cookie(&state, &mut response, &cookie, session::ABSOLUTE_MS / 1000);
    with_request_id(response, &correlation)
}

/// Ends the session (audited as `ui.logout`) and clears the cookie.
async fn logout(State(state): State<AppState>, viewer: Viewer, headers: HeaderMap, body: Body) -> Response {
    if let Err(refused) = read_post(&state, &viewer, &headers, body, "ui.logout").await {
        return refused;
    }
    if let Some(value) = crate::authorize::cookie_value(&headers, COOKIE) {
        state.console.sessions.remove(&value);
    }
    let mut event = AuditEvent::allow("ui.logout", &viewer.correlation);
    describe_viewer(&mut event, &viewer.who);
    if let Err(e) = state.authz.log.record(event).await {
        tracing::error!(error = %e, "audit append failed");
    }
    let mut response = page(Redirect::to("/ui/login").into_response());
    set_cookie(&state, &mut response, "", 0);
    with_request_id(response, &viewer.correlation)
}
