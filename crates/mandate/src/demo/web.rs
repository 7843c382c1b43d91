//! The demo's HTTP side: the agent's calls (token endpoint, gateway) and Alice's browser (sign-in,
//! consent and approval forms, one session cookie), plus reading JWT claims and audit events.

use anyhow::{Context, anyhow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_audit::query::QueryParams;
use mandate_authz::Authz;
use reqwest::header;
use serde_json::{Value, json};

const SESSION_COOKIE: &str = "mandate_session";

/// An HTTP answer: status, the headers the story looks at, and the body (JSON when it is).
pub struct Answer {
    pub status: u16,
    pub location: Option<String>,
    pub www_authenticate: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A hidden form field of an HTML page.
    pub fn field(&self, name: &str) -> anyhow::Result<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start =
            self.body.find(&marker).with_context(|| format!("no form field {name} on the page"))? + marker.len();
        let end = self.body[start..].find('"').context("an unterminated form field")?;
        Ok(self.body[start..start + end].to_owned())
    }

    /// A query parameter of the redirect this answer makes.
    pub fn redirect_param(&self, name: &str) -> Option<String> {
        let location = reqwest::Url::parse(self.location.as_deref()?).ok()?;
        location.query_pairs().find(|(n, _)| n == name).map(|(_, v)| v.into_owned())
    }
}

/// A client that follows no redirects and keeps Mandate's session cookie, as a browser would.
pub struct Web {
    http: reqwest::Client,
    session: Option<String>,
}

impl Web {
    pub fn new() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, session: None })
    }

    pub async fn get(&mut self, url: &str) -> anyhow::Result<Answer> {
        let request = self.http.get(url);
        self.send(request).await
    }

    /// A form posted from a page of `origin` (the headers a browser adds to a same-site form).
    pub async fn submit(&mut self, url: &str, origin: &str, form: &[(&str, &str)]) -> anyhow::Result<Answer> {
        let request =
            self.http.post(url).header(header::ORIGIN, origin).header("sec-fetch-site", "same-origin").form(form);
        self.send(request).await
    }

    /// An OAuth request at a token-like endpoint, with HTTP Basic client authentication if given.
    pub async fn oauth(
        &mut self,
        url: &str,
        client: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut request = self.http.post(url).form(form);
        if let Some((id, secret)) = client {
            request = request.basic_auth(id, Some(secret));
        }
        self.send(request).await
    }

    /// A JSON body with a bearer token (the agent calling through the gateway).
    pub async fn call(&mut self, url: &str, token: &str, body: &Value) -> anyhow::Result<Answer> {
        let request = self
            .http
            .post(url)
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(request).await
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let request = match &self.session {
            Some(cookie) => request.header(header::COOKIE, format!("{SESSION_COOKIE}={cookie}")),
            None => request,
        };
        let response = request.send().await.context("an HTTP request on loopback")?;
        let headers = response.headers().clone();
        let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Some(cookie) = text(header::SET_COOKIE)
            && let Some(value) = cookie.split(';').next().and_then(|c| c.strip_prefix(&format!("{SESSION_COOKIE}=")))
        {
            self.session = Some(value.to_owned());
        }
        Ok(Answer {
            status: response.status().as_u16(),
            location: text(header::LOCATION),
            www_authenticate: text(header::WWW_AUTHENTICATE),
            body: response.text().await.context("reading an HTTP answer")?,
        })
    }
}

/// An MCP `tools/call` message.
pub fn tool_call(tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

/// A JWT's claims, decoded without verification (for display; the servers verified it).
pub fn claims(token: &str) -> anyhow::Result<Value> {
    let payload = token.split('.').nth(1).ok_or_else(|| anyhow!("not a JWT"))?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).context("a JWT payload that is not base64url")?;
    serde_json::from_slice(&bytes).context("a JWT payload that is not JSON")
}

/// The named claims as `name=value` pairs for an evidence line (absent ones are skipped).
pub fn claim_line(claims: &Value, names: &[&str]) -> String {
    names
        .iter()
        .filter_map(|name| claims.get(*name).map(|value| format!("{name}={}", super::check::shown(value))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Audit events matching `params`, in log order (what `mandate audit query` prints).
pub async fn audit_events(authz: &Authz, params: QueryParams) -> anyhow::Result<Vec<Value>> {
    let filter = params.into_filter(&authz.config.trust_domain)?;
    Ok(filter.query(authz.store.as_ref()).await?.events)
}

/// One audit event as an evidence line: `seq 12 token.issue allow (detail)`.
pub fn event_line(event: &Value) -> String {
    let mut line = format!(
        "audit seq {} {} {}",
        event["seq"],
        super::check::shown(&event["action"]),
        super::check::shown(&event["decision"])
    );
    if let Some(reason) = event.get("reason").and_then(Value::as_str) {
        line.push_str(&format!(" reason={reason}"));
    }
    if let Some(detail) = event.get("detail").and_then(Value::as_str) {
        line.push_str(&format!(" ({detail})"));
    }
    line
}
