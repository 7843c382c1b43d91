//! CIBA endpoints: `POST /oauth2/bc-authorize` (an agent asks for approval of one described
//! action) and the owner's approval page `GET|POST /oauth2/ciba/approve/{id}` (server-side
//! pages, no scripts, the strict headers and cross-site refusal of the authorization pages).

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mandate_authz::ciba::{ApprovalForm, ApprovalView, BcAuthorizeRequest, Decision, approval_view, decide};
use mandate_authz::record_refusal;
use mandate_core::{AuditEvent, OAuthError, OAuthErrorCode};
use zeroize::Zeroizing;

use crate::AppState;
use crate::authorize::{error_page, is_cross_site};
use crate::oauth::{audited, no_store, presented_credentials};
use crate::reply::{Form, OAuthReply, correlation_id, with_request_id};

pub(crate) async fn bc_authorize(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let correlation = correlation_id(&headers);
    let response = match bc_authorize_flow(&state, &headers, body, &correlation).await {
        Ok(answer) => no_store(Json(answer).into_response()),
        Err(reply) => reply.into_response(),
    };
    with_request_id(response, &correlation)
}

async fn bc_authorize_flow(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    correlation: &str,
) -> Result<mandate_authz::ciba::BcAuthorizeResponse, OAuthReply> {
    let action = "ciba.request";
    let mut form = audited(state, action, correlation, Form::read(headers, body).await).await?;
    let presented = audited(state, action, correlation, presented_credentials(headers, &mut form)).await?;
    let request = BcAuthorizeRequest {
        presented,
        scope: form.take("scope"),
        login_hint: form.take("login_hint"),
        id_token_hint: form.take("id_token_hint"),
        login_hint_token: form.take("login_hint_token"),
        binding_message: form.take("binding_message"),
        user_code: form.take("user_code"),
        resources: form.all("resource"),
        requested_expiry: form.take("requested_expiry"),
        authorization_details: form.take("authorization_details"),
        client_notification_token: form.take("client_notification_token"),
    };
    mandate_authz::ciba::backchannel_authorize(&state.authz, request, correlation).await.map_err(OAuthReply::from)
}

pub(crate) async fn approval_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(approval_id): Path<String>,
) -> Response {
    let correlation = correlation_id(&headers);
    let response = match approval_view(&state.authz, &approval_id).await {
        Ok(view) => ApprovePage::new(&view, None).into_response(),
        Err(error) => {
            let event = AuditEvent::allow("ciba.view", &correlation);
            error_page(&record_refusal(&state.authz, event, error).await)
        }
    };
    with_request_id(crate::authorize::strict_headers(response), &correlation)
}

pub(crate) async fn approval_decision(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(approval_id): Path<String>,
    body: Body,
) -> Response {
    let correlation = correlation_id(&headers);
    let response = match read_form(&state, &headers, body, approval_id, &correlation).await {
        Err(error) => error_page(&error),
        Ok(form) => {
            let approval_id = form.approval_id.clone();
            match decide(&state.authz, form, &correlation).await {
                Ok(decision) => DonePage { approved: decision == Decision::Approved }.into_response(),
                Err(error) => refused(&state, &approval_id, &error).await,
            }
        }
    };
    with_request_id(crate::authorize::strict_headers(response), &correlation)
}

/// The form, from this site only (login CSRF and clickjacked decisions are refused).
async fn read_form(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    approval_id: String,
    correlation: &str,
) -> Result<ApprovalForm, OAuthError> {
    let event = || AuditEvent::allow("ciba.decision", correlation);
    if is_cross_site(headers, &state.authz.config.issuer) {
        let error = OAuthError::new(OAuthErrorCode::AccessDenied, "the form was posted from another site");
        return Err(record_refusal(&state.authz, event(), error).await);
    }
    let mut form = match Form::read(headers, body).await {
        Ok(form) => form,
        Err(reply) => return Err(record_refusal(&state.authz, event(), reply.error).await),
    };
    Ok(ApprovalForm {
        approval_id,
        owner: form.take("owner"),
        password: form.take("password").map(Zeroizing::new),
        decision: form.take("decision"),
    })
}

/// A wrong owner or password shows the page again; anything else ends on the error page.
async fn refused(state: &AppState, approval_id: &str, error: &OAuthError) -> Response {
    if error.code == OAuthErrorCode::AccessDenied
        && let Ok(view) = approval_view(&state.authz, approval_id).await
    {
        let mut page = ApprovePage::new(&view, Some(&error.description)).into_response();
        *page.status_mut() = axum::http::StatusCode::FORBIDDEN;
        return page;
    }
    error_page(error)
}

#[derive(Template, WebTemplate)]
#[template(path = "ciba_approve.html")]
struct ApprovePage<'a> {
    view: &'a ApprovalView,
    client_title: &'a str,
    agent: Option<String>,
    notice: Option<&'a str>,
}

impl<'a> ApprovePage<'a> {
    fn new(view: &'a ApprovalView, notice: Option<&'a str>) -> Self {
        Self {
            view,
            client_title: view.client_name.as_deref().unwrap_or(&view.client_id),
            agent: view.agent.as_ref().map(|(agent, owner)| format!("{agent} (owned by {owner})")),
            notice,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "ciba_done.html")]
struct DonePage {
    approved: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_agents_control() {
        let view = ApprovalView {
            approval_id: "aid".into(),
            client_id: "c1".into(),
            client_name: None,
            agent: Some(("helper".into(), "alice".into())),
            owner: "alice".into(),
            resource: "https://api.example".into(),
            scopes: vec!["write".into()],
            binding_message: "<script>x</script> delete row 7".into(),
            authorization_details: Some("[{\"type\":\"<b>\"}]".into()),
        };
        let html = ApprovePage::new(&view, None).render().unwrap();
        assert!(!html.contains("<script>x") && !html.contains("<b>"), "{html}");
        assert!(html.contains("delete row 7"));
        assert!(html.contains(r#"<meta name="referrer" content="same-origin">"#), "{html}");
        for field in ["name=\"owner\"", "name=\"password\"", "value=\"approve\"", "value=\"deny\"", "/approve/aid\""] {
            assert!(html.contains(field), "missing {field}");
        }
    }
}
