//! Governance of what the gateway forwards, configured by `mandate gateway --governance FILE`:
//! content checks, owner approval of single tool calls, session budgets and loop guards, and the
//! one place a policy engine decides. `Governance::evaluate` runs them in that order on each
//! authenticated request and either admits it (counted, possibly redacted) or refuses it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mandate_core::Clock;
use mandate_guard::Principal;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::approval::{self, ApprovalTarget, DEFAULT_MAX_SPENT, SpendError, SpentApprovals};
use crate::budget::{
    BudgetConfig, BudgetConfigError, Budgets, Counters, Exceeded, LimitKind, LoopGuardConfig, PlannedCall, SessionKey,
};
use crate::content::{ContentAction, ContentConfig, ContentConfigError, Scan, Scanner};
use crate::mcp::{MAX_BATCH, McpCall};
use mandate_policy::{Action, Counters as PolicyCounters, PolicyEngine, PolicyRequest};

/// The largest governance file read.
const MAX_CONFIG_FILE: u64 = 1 << 20;
/// Longest `binding_message` CIBA accepts.
const MAX_BINDING_MESSAGE: usize = 200;
/// The MCP session header (Streamable HTTP transport).
pub const MCP_SESSION_HEADER: &str = "mcp-session-id";
/// Longest MCP session id used as a counter key; longer ones are refused.
const MAX_MCP_SESSION_ID: usize = 128;

/// The governance file. Every section is optional; an absent section turns its checks off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    pub budget: Option<BudgetConfig>,
    pub loop_guard: Option<LoopGuardConfig>,
    pub content: Option<ContentConfig>,
    pub approval: Option<ApprovalConfig>,
}

/// `[approval]`: tools that always need the owner's approval, and the spent-approval memory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    #[serde(default)]
    pub require_for: Vec<String>,
    /// Unexpired spent approvals remembered (default 100 000).
    pub max_spent: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    #[error("reading {path}: {error}")]
    Read { path: String, error: String },
    #[error("governance file: {0}")]
    Parse(String),
    #[error(transparent)]
    Content(#[from] ContentConfigError),
    #[error(transparent)]
    Budget(#[from] BudgetConfigError),
}

impl GovernanceConfig {
    pub fn parse(text: &str) -> Result<Self, GovernanceError> {
        toml::from_str(text).map_err(|e| GovernanceError::Parse(e.to_string()))
    }

    /// Reads and parses a governance file (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Self, GovernanceError> {
        let shown = path.display().to_string();
        let read_error = |error: String| GovernanceError::Read { path: shown.clone(), error };
        let size = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?.len();
        if size > MAX_CONFIG_FILE {
            return Err(read_error("larger than 1 MiB".into()));
        }
        Self::parse(&std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?)
    }
}

/// What a policy engine is told about one JSON-RPC message (or a plain HTTP request), before
/// the gateway admits it. Counters are the session's values before this call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFacts {
    pub tool: Option<String>,
    pub mcp_method: Option<String>,
    pub arguments: Option<Value>,
    pub counters: Counters,
    /// Kinds of content findings in the request body (see `content`).
    pub findings: Vec<String>,
    /// The request carries an owner approval naming exactly this call.
    pub approved: bool,
}

/// A policy engine's answer for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny {
        reason: String,
    },
    /// Allowed only with the owner's approval of exactly this call.
    RequireApproval,
}

/// The request body as far as content checks are concerned.
pub(crate) enum Body<'a> {
    /// No body (or nothing was read).
    Empty,
    Json(&'a Bytes),
    Text(&'a Bytes),
    Form(&'a Bytes),
    /// A body the gateway does not read: another content type or an encoded one.
    Unscannable,
}

/// One request, authenticated, as governance sees it.
pub(crate) struct Inbound<'a> {
    pub principal: &'a Principal,
    /// The agent answering for the call (SPIFFE ID), when one does.
    pub agent: Option<&'a str>,
    pub http_method: &'a str,
    pub path: &'a str,
    pub session: SessionKey,
    /// The `Mcp-Session-Id` header, if any (already checked by [`mcp_session_id`]).
    pub mcp_session: Option<&'a str>,
    pub body: Body<'a>,
    pub calls: &'a [McpCall],
    /// How many JSON-RPC messages the body held (a batch's length).
    pub messages: usize,
}

/// The request goes on: maybe with a new (redacted) body, and with what the audit event notes.
pub(crate) struct Admitted {
    pub body: Option<Bytes>,
    /// Appended to the `gateway.forward` detail: findings, approval.
    pub detail: Option<String>,
}

/// A refusal: the answer and what the `gateway.deny` event records.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    /// Extra members of the JSON answer (`approval_required`); boxed to keep refusals small.
    pub extra: Box<Map<String, Value>>,
    pub retry_after_secs: Option<u64>,
    pub www_authenticate: Option<&'static str>,
    /// The audit detail: which limit or finding; never matched text or arguments.
    pub audit_detail: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, description: String) -> Self {
        Self {
            status,
            code,
            audit_detail: description.clone(),
            description,
            extra: Box::default(),
            retry_after_secs: None,
            www_authenticate: None,
        }
    }

    fn from_exceeded(exceeded: &Exceeded) -> Self {
        let status = match exceeded.kind {
            LimitKind::Rate => StatusCode::TOO_MANY_REQUESTS,
            LimitKind::Budget | LimitKind::Loop => StatusCode::FORBIDDEN,
        };
        let mut refusal = Self::new(status, exceeded.kind.code(), exceeded.description.clone());
        refusal.retry_after_secs = exceeded.retry_after_secs;
        refusal
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code));
        body.insert("error_description".into(), json!(self.description));
        body.extend(*self.extra);
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.www_authenticate {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

pub(crate) enum Decision {
    Admit(Admitted),
    Refuse(Refusal),
}

/// Where approvals are asked for, filled in by the gateway from its guard configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct Endpoints {
    pub resource: String,
    pub backchannel_authentication_endpoint: String,
    pub scope: String,
}

/// The compiled governance of one gateway process.
pub struct Governance {
    budgets: Option<Budgets>,
    scanner: Option<Scanner>,
    unscanned: ContentAction,
    approval_tools: HashSet<String>,
    spent: SpentApprovals,
    clock: Arc<dyn Clock>,
    endpoints: Endpoints,
    /// The Cedar policy set deciding `call`; `None` or an empty engine: no policy decision.
    policy: Option<Arc<PolicyEngine>>,
}

const APPROVAL_CHALLENGE: &str =
    r#"Bearer error="insufficient_authorization", error_description="owner approval required for this call""#;

impl Governance {
    pub fn new(config: GovernanceConfig, clock: Arc<dyn Clock>) -> Result<Self, GovernanceError> {
        let budgets = match (config.budget, config.loop_guard) {
            (None, None) => None,
            (budget, loop_guard) => Some(Budgets::new(budget.unwrap_or_default(), loop_guard, Arc::clone(&clock))?),
        };
        let unscanned = config.content.as_ref().map_or(ContentAction::Allow, |c| c.unscanned);
        let scanner = config.content.as_ref().map(Scanner::new).transpose()?;
        let approval = config.approval.unwrap_or_default();
        Ok(Self {
            budgets,
            scanner,
            unscanned,
            approval_tools: approval.require_for.into_iter().collect(),
            spent: SpentApprovals::new(approval.max_spent.unwrap_or(DEFAULT_MAX_SPENT)),
            clock,
            endpoints: Endpoints::default(),
            policy: None,
        })
    }

    /// The same governance with `engine` deciding every call (the server's set when
    /// co-located, a `--policy-file` when remote).
    pub fn with_policy(mut self, engine: Arc<PolicyEngine>) -> Self {
        self.policy = Some(engine);
        self
    }

    pub(crate) fn with_endpoints(mut self, endpoints: Endpoints) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Whether request bodies other than JSON POSTs must be read (for content checks).
    pub(crate) fn scans_content(&self) -> bool {
        self.scanner.is_some()
    }

    /// Content scan → approval match → budget and loop check (counting nothing) → policy →
    /// count (and spend the approval). Any refusal stops the request; a batch goes through whole
    /// or not at all.
    pub(crate) fn evaluate(&self, inbound: &Inbound<'_>) -> Decision {
        match self.evaluate_inner(inbound) {
            Ok(admitted) => Decision::Admit(admitted),
            Err(refusal) => Decision::Refuse(refusal),
        }
    }

    fn evaluate_inner(&self, inbound: &Inbound<'_>) -> Result<Admitted, Refusal> {
        if inbound.messages > MAX_BATCH {
            let text = format!("a JSON-RPC batch may hold at most {MAX_BATCH} messages");
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid_request", text));
        }
        let (scan, body) = self.scan(&inbound.body)?;
        let findings = scan.as_ref().map(Scan::kinds).unwrap_or_default();
        let mut notes: Vec<String> = scan.as_ref().and_then(Scan::summary).into_iter().collect();

        let tool_calls: Vec<(&McpCall, ApprovalTarget)> = inbound
            .calls
            .iter()
            .filter(|c| c.method == "tools/call")
            .filter_map(|c| {
                let tool = c.tool.clone()?;
                let arguments_sha256 = approval::arguments_sha256(c.arguments.as_ref());
                Some((c, ApprovalTarget { resource: self.endpoints.resource.clone(), tool, arguments_sha256 }))
            })
            .collect();
        let approval_jti = self.match_approval(inbound, &tool_calls)?;
        let approved = approval_jti.is_some();
        if approved {
            notes.push("approved=true".into());
        }

        let planned: Vec<PlannedCall> = tool_calls
            .iter()
            .map(|(call, target)| PlannedCall {
                tool: target.tool.clone(),
                fingerprint: fingerprint(&target.tool, call.arguments.as_ref()),
                approved,
            })
            .collect();
        let mut counters = vec![Counters::default(); planned.len()];
        if let (Some(budgets), false) = (&self.budgets, planned.is_empty()) {
            match budgets.peek(&inbound.session, inbound.mcp_session, &planned) {
                Ok(found) => counters = found,
                Err(exceeded) => return Err(self.exceeded(&exceeded, &tool_calls)),
            }
        }

        // Every message is put to the policy; tool calls with their counters.
        let mut needs_approval = Vec::new();
        let mut tool_index = 0;
        let messages: Vec<Option<&McpCall>> =
            if inbound.calls.is_empty() { vec![None] } else { inbound.calls.iter().map(Some).collect() };
        for call in messages {
            let is_tool_call = call.is_some_and(|c| c.method == "tools/call" && c.tool.is_some());
            let call_counters =
                if is_tool_call { counters.get(tool_index).copied().unwrap_or_default() } else { Counters::default() };
            let facts = CallFacts {
                tool: call.and_then(|c| c.tool.clone()),
                mcp_method: call.map(|c| c.method.clone()),
                arguments: call.and_then(|c| c.arguments.clone()),
                counters: call_counters,
                findings: findings.clone(),
                approved: approved && is_tool_call,
            };
            let (verdict, decided) = self.policy_verdict(inbound, &facts);
            if let Verdict::Deny { reason } = &verdict {
                let mut refusal = Refusal::new(StatusCode::FORBIDDEN, "policy_denied", reason.clone());
                refusal.audit_detail = decided.unwrap_or_default();
                return Err(refusal);
            }
            notes.extend(decided);
            if is_tool_call {
                let configured = facts.tool.as_ref().is_some_and(|t| self.approval_tools.contains(t));
                if (verdict == Verdict::RequireApproval || configured) && !facts.approved {
                    needs_approval.push(tool_index);
                }
                tool_index += 1;
            }
        }
        if !needs_approval.is_empty() {
            let why = "this tool call needs the owner's approval";
            let mut refusal = self.approval_required(&tool_calls, &needs_approval, why);
            notes.insert(0, refusal.audit_detail);
            refusal.audit_detail = notes.join(" ");
            return Err(refusal);
        }

        // Admission: spend the approval, then count; a refused count gives the approval back.
        if let Some((jti, exp)) = &approval_jti
            && let Err(error) = self.spent.spend(jti, *exp, self.clock.now_secs())
        {
            return Err(spend_refusal(error));
        }
        if let (Some(budgets), false) = (&self.budgets, planned.is_empty())
            && let Err(exceeded) = budgets.reserve(&inbound.session, inbound.mcp_session, &planned)
        {
            if let Some((jti, _)) = &approval_jti {
                self.spent.unspend(jti);
            }
            return Err(self.exceeded(&exceeded, &tool_calls));
        }
        let detail = (!notes.is_empty()).then(|| notes.join(" "));
        Ok(Admitted { body, detail })
    }

    /// The Cedar decision on one call, and its audit note (`policy=allow|deny ids=…`); no note
    /// when no policy set is active. Policies annotated `@step_up("approval")` that alone deny
    /// a call ask for the owner's approval instead of refusing it.
    fn policy_verdict(&self, inbound: &Inbound<'_>, facts: &CallFacts) -> (Verdict, Option<String>) {
        let Some(engine) = self.policy.as_ref().filter(|e| e.is_active()) else { return (Verdict::Allow, None) };
        let principal = inbound.principal;
        let scopes: Vec<String> = principal.scopes.iter().map(str::to_owned).collect();
        let counters = facts.counters;
        let request = PolicyRequest {
            action: Action::Call,
            agent: inbound.agent,
            client_id: &principal.client_id,
            owner: principal.owner.as_deref(),
            subject: Some(&principal.subject),
            resource: &self.endpoints.resource,
            tool: facts.tool.as_deref(),
            scopes: &scopes,
            grant_type: "",
            mcp_method: facts.mcp_method.as_deref(),
            http_method: inbound.http_method,
            path: inbound.path,
            arguments: facts.arguments.as_ref(),
            counters: PolicyCounters {
                calls: saturating_i64(counters.calls),
                tool_calls: saturating_i64(counters.tool_calls),
                spend: saturating_i64(counters.spend),
                repeats: i64::from(counters.repeats),
            },
            findings: &facts.findings,
            approved: facts.approved,
        };
        let decision = engine.decide(&request);
        let note = decision.audit_note();
        let verdict = match (decision.allowed, decision.step_up) {
            (true, _) => Verdict::Allow,
            (false, true) => Verdict::RequireApproval,
            (false, false) => Verdict::Deny { reason: decision.refusal() },
        };
        (verdict, Some(note))
    }

    /// Runs the content checks; a denied finding refuses, a redaction gives the new body.
    fn scan(&self, body: &Body<'_>) -> Result<(Option<Scan>, Option<Bytes>), Refusal> {
        let Some(scanner) = &self.scanner else { return Ok((None, None)) };
        let unscannable = || {
            if self.unscanned == ContentAction::Deny {
                let text = "the request body cannot be scanned (content type or encoding)".to_owned();
                Err(Refusal::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_unscannable", text))
            } else {
                Ok((None, None))
            }
        };
        let text = |bytes: &Bytes| std::str::from_utf8(bytes).map(str::to_owned).ok();
        let (scan, new_body) = match body {
            Body::Empty => return Ok((None, None)),
            Body::Unscannable => return unscannable(),
            Body::Json(bytes) => match serde_json::from_slice::<Value>(bytes) {
                Ok(mut value) => {
                    let scan = scanner.scan_json(&mut value);
                    let redacted = scan.redacted.then(|| serde_json::to_vec(&value).ok()).flatten().map(Bytes::from);
                    (scan, redacted)
                }
                // Not JSON after all: scanned as text, so nothing slips through unparsed.
                Err(_) => match text(bytes) {
                    Some(text) => {
                        let (redacted, scan) = scanner.scan_text(&text);
                        (scan, redacted.map(Bytes::from))
                    }
                    None => return unscannable(),
                },
            },
            Body::Text(bytes) => match text(bytes) {
                Some(text) => {
                    let (redacted, scan) = scanner.scan_text(&text);
                    (scan, redacted.map(Bytes::from))
                }
                None => return unscannable(),
            },
            Body::Form(bytes) => match text(bytes) {
                Some(text) => {
                    let (redacted, scan) = scanner.scan_form(&text);
                    (scan, redacted.map(Bytes::from))
                }
                None => return unscannable(),
            },
        };
        if let Some(denied) = &scan.denied {
            let text = format!(
                "the request body contains {} at {}; the request was not forwarded",
                denied.kind, denied.location
            );
            let mut refusal = Refusal::new(StatusCode::FORBIDDEN, "content_rejected", text);
            refusal.audit_detail = scan.summary().unwrap_or_default();
            return Err(refusal);
        }
        Ok((Some(scan), new_body))
    }

    /// For a token carrying `mandate_tool_call` approvals: every message must be a tool call
    /// one of them names, and the approval must be unspent. Returns its `jti` and `exp`.
    fn match_approval(
        &self,
        inbound: &Inbound<'_>,
        tool_calls: &[(&McpCall, ApprovalTarget)],
    ) -> Result<Option<(String, i64)>, Refusal> {
        let Some(entries) = approval::approval_entries(&inbound.principal.claims) else { return Ok(None) };
        let invalid = |text: &str| {
            let mut refusal = Refusal::new(StatusCode::FORBIDDEN, "invalid_approval", text.to_owned());
            refusal.www_authenticate = Some(APPROVAL_CHALLENGE);
            refusal
        };
        if tool_calls.is_empty() || tool_calls.len() != inbound.calls.len() {
            return Err(invalid("an approval token authorises only the tool call it names"));
        }
        if let Some((_, target)) = tool_calls.iter().find(|(_, target)| !entries.iter().any(|e| target.matches(e))) {
            let mut refusal = invalid("this approval names another tool call (tool, arguments or resource differ)");
            refusal.audit_detail = format!("approval does not name tool={}", target.tool);
            return Err(refusal);
        }
        let jti = &inbound.principal.jti;
        if self.spent.is_spent(jti) {
            return Err(invalid("this approval was already used"));
        }
        Ok(Some((jti.clone(), inbound.principal.exp)))
    }

    /// The refusal for an exceeded limit: `approval_required` when it may be stepped up.
    fn exceeded(&self, exceeded: &Exceeded, tool_calls: &[(&McpCall, ApprovalTarget)]) -> Refusal {
        if exceeded.step_up {
            let why = format!("a budget is exhausted ({}); the owner may approve this call", exceeded.description);
            let mut refusal = self.approval_required(tool_calls, &[exceeded.call], &why);
            refusal.audit_detail = format!("step_up {}", exceeded.description);
            return refusal;
        }
        Refusal::from_exceeded(exceeded)
    }

    /// `approval_required`: the `authorization_details` to have approved through CIBA.
    fn approval_required(&self, tool_calls: &[(&McpCall, ApprovalTarget)], indexes: &[usize], why: &str) -> Refusal {
        let targets: Vec<&ApprovalTarget> = indexes.iter().filter_map(|i| tool_calls.get(*i)).map(|(_, t)| t).collect();
        let tools: Vec<&str> = targets.iter().map(|t| t.tool.as_str()).collect();
        let mut refusal = Refusal::new(StatusCode::FORBIDDEN, "approval_required", why.to_owned());
        refusal.www_authenticate = Some(APPROVAL_CHALLENGE);
        refusal.audit_detail = format!("{why}: tool={}", tools.join(","));
        let extra = &mut refusal.extra;
        extra.insert("authorization_details".into(), Value::Array(targets.iter().map(|t| t.detail()).collect()));
        extra.insert("binding_message".into(), json!(binding_message(&tools, &self.endpoints.resource)));
        extra.insert(
            "backchannel_authentication_endpoint".into(),
            json!(self.endpoints.backchannel_authentication_endpoint),
        );
        extra.insert("resource".into(), json!(self.endpoints.resource));
        extra.insert("scope".into(), json!(self.endpoints.scope));
        refusal
    }
}

fn spend_refusal(error: SpendError) -> Refusal {
    match error {
        SpendError::Spent => {
            let mut refusal = Refusal::new(StatusCode::FORBIDDEN, "invalid_approval", error.to_string());
            refusal.www_authenticate = Some(APPROVAL_CHALLENGE);
            refusal
        }
        SpendError::Full => Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", error.to_string()),
    }
}

/// What the loop guard compares: the tool and its canonical arguments.
fn fingerprint(tool: &str, arguments: Option<&Value>) -> [u8; 32] {
    let arguments = arguments.map_or_else(|| "{}".to_owned(), approval::canonical_json);
    mandate_crypto::secret::sha256(format!("{tool}\n{arguments}").as_bytes())
}

/// A short, printable text for the owner's approval page naming the tool(s) and the resource.
fn binding_message(tools: &[&str], resource: &str) -> String {
    let printable = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
    let tools = printable(&tools.join(", "));
    let resource = printable(resource);
    let mut message = format!("Call {tools} at {resource}");
    if message.chars().count() > MAX_BINDING_MESSAGE {
        message = message.chars().take(MAX_BINDING_MESSAGE - 1).collect();
        message.push('…');
    }
    message
}

/// The `Mcp-Session-Id` to count under: visible ASCII, at most 128 characters. `Err` for a
/// header that is present but unusable (refused, so odd values cannot dodge per-session counts).
pub(crate) fn mcp_session_id(headers: &axum::http::HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(MCP_SESSION_HEADER) else { return Ok(None) };
    match value.to_str() {
        Ok(id) if !id.is_empty() && id.len() <= MAX_MCP_SESSION_ID && id.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(id))
        }
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the Mcp-Session-Id header must be 1-128 visible ASCII characters".into(),
        )),
    }
}

fn saturating_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use mandate_core::ScopeSet;

    use super::*;
    use crate::mcp;

    struct FixedClock(AtomicI64);
    impl Clock for FixedClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    const RESOURCE: &str = "https://gw.example/mcp";

    fn governance(toml: &str) -> Governance {
        let config = GovernanceConfig::parse(toml).unwrap();
        Governance::new(config, Arc::new(FixedClock(AtomicI64::new(1_000_000)))).unwrap().with_endpoints(Endpoints {
            resource: RESOURCE.into(),
            backchannel_authentication_endpoint: "https://as.example/oauth2/bc-authorize".into(),
            scope: "openid read".into(),
        })
    }

    fn principal(claims: Value) -> Principal {
        Principal {
            issuer: "https://as.example".into(),
            subject: "alice".into(),
            client_id: "c1".into(),
            scopes: ScopeSet::parse("read").unwrap(),
            owner: Some("alice".into()),
            jti: claims["jti"].as_str().unwrap_or("jti-1").into(),
            iat: 0,
            exp: 2_000,
            jkt: None,
            actor: None,
            claims,
        }
    }

    fn tool_call(tool: &str, arguments: Value) -> Bytes {
        Bytes::from(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
                .to_string(),
        )
    }

    fn run(governance: &Governance, principal: &Principal, body: &Bytes) -> Decision {
        let mcp::Inspected { calls, messages } = mcp::inspect(body);
        let inbound = Inbound {
            principal,
            agent: Some("spiffe://t/agent/a"),
            http_method: "POST",
            path: "/mcp",
            session: SessionKey { agent: "spiffe://t/agent/a".into(), subject: principal.subject.clone() },
            mcp_session: None,
            body: Body::Json(body),
            calls: &calls,
            messages,
        };
        governance.evaluate(&inbound)
    }

    fn refusal(decision: Decision) -> Refusal {
        match decision {
            Decision::Refuse(refusal) => refusal,
            Decision::Admit(_) => panic!("admitted"),
        }
    }

    fn admitted(decision: Decision) -> Admitted {
        match decision {
            Decision::Admit(admitted) => admitted,
            Decision::Refuse(refusal) => panic!("refused: {refusal:?}"),
        }
    }

    #[test]
    fn an_empty_file_governs_nothing() {
        let g = governance("");
        let p = principal(json!({}));
        for _ in 0..5 {
            let a = admitted(run(&g, &p, &tool_call("t", json!({"k": "AKIAIOSFODNN7EXAMPLE"}))));
            assert!(a.body.is_none() && a.detail.is_none());
        }
    }

    #[test]
    fn unknown_settings_are_refused() {
        assert!(GovernanceConfig::parse("[budget]\nmax_call = 3").is_err());
        assert!(GovernanceConfig::parse("[nonsense]").is_err());
        assert!(GovernanceConfig::parse("[budget]\non_exceed = \"maybe\"").is_err());
        let bad_pattern = "[content]\n[[content.pii]]\nname = \"x\"\npattern = \"(\"";
        let config = GovernanceConfig::parse(bad_pattern).unwrap();
        assert!(matches!(
            Governance::new(config, Arc::new(FixedClock(AtomicI64::new(0)))),
            Err(GovernanceError::Content(_))
        ));
    }

    #[test]
    fn a_required_tool_needs_an_approval_naming_that_exact_call() {
        let g = governance("[approval]\nrequire_for = [\"transfer\"]");
        let body = tool_call("transfer", json!({"to": "bob", "amount": 5}));
        let refused = refusal(run(&g, &principal(json!({})), &body));
        assert_eq!((refused.status, refused.code), (StatusCode::FORBIDDEN, "approval_required"));
        let details = refused.extra["authorization_details"].clone();
        assert_eq!(details[0]["type"], "mandate_tool_call");
        assert_eq!(details[0]["locations"], json!([RESOURCE]));
        assert_eq!(details[0]["tool"], "transfer");
        assert_eq!(refused.extra["binding_message"], format!("Call transfer at {RESOURCE}"));
        assert_eq!(refused.extra["backchannel_authentication_endpoint"], "https://as.example/oauth2/bc-authorize");

        // The approved token goes through once.
        let approval = principal(json!({"jti": "ap-1", "authorization_details": details}));
        let ok = admitted(run(&g, &approval, &body));
        assert_eq!(ok.detail.as_deref(), Some("approved=true"));
        let again = refusal(run(&g, &approval, &body));
        assert_eq!((again.code, again.description.as_str()), ("invalid_approval", "this approval was already used"));

        // A fresh approval for A does not authorise B, nor A with other arguments.
        let fresh = principal(json!({"jti": "ap-2", "authorization_details": refused.extra["authorization_details"]}));
        for other in [tool_call("transfer", json!({"to": "bob", "amount": 500})), tool_call("read_mail", json!({}))] {
            assert_eq!(refusal(run(&g, &fresh, &other)).code, "invalid_approval");
        }
        let listing = Bytes::from(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#);
        assert_eq!(refusal(run(&g, &fresh, &listing)).code, "invalid_approval", "not even for other methods");
        assert!(matches!(run(&g, &fresh, &body), Decision::Admit(_)), "still unspent after the refusals");
    }

    #[test]
    fn a_step_up_budget_asks_for_approval_then_admits_it() {
        let g = governance("[budget]\nmax_calls = 1\non_exceed = \"step_up\"");
        let p = principal(json!({}));
        admitted(run(&g, &p, &tool_call("t", json!({"n": 1}))));
        let body = tool_call("t", json!({"n": 2}));
        let refused = refusal(run(&g, &p, &body));
        assert_eq!(refused.code, "approval_required");
        assert!(refused.audit_detail.contains("budget.max_calls=1 count=1"), "{}", refused.audit_detail);
        let approval = principal(json!({"jti": "ap", "authorization_details": refused.extra["authorization_details"]}));
        admitted(run(&g, &approval, &body));
    }

    #[test]
    fn budget_refusals_name_the_limit() {
        let g = governance("[budget.tools.search]\nmax_calls = 2\n[loop_guard]\nmax_repeats = 5");
        let p = principal(json!({}));
        admitted(run(&g, &p, &tool_call("search", json!({"q": 1}))));
        admitted(run(&g, &p, &tool_call("search", json!({"q": 2}))));
        let refused = refusal(run(&g, &p, &tool_call("search", json!({"q": 3}))));
        assert_eq!((refused.status, refused.code), (StatusCode::FORBIDDEN, "budget_exceeded"));
        assert_eq!(refused.description, "budget.tools.search.max_calls=2 count=2");
    }

    #[test]
    fn the_loop_guard_refuses_the_same_call_over_and_over() {
        let g = governance("[loop_guard]\nmax_repeats = 2");
        let p = principal(json!({}));
        // Key order does not make a call different.
        admitted(run(
            &g,
            &p,
            &Bytes::from(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1,"b":2}}}"#,
            ),
        ));
        admitted(run(
            &g,
            &p,
            &Bytes::from(
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":{"b":2,"a":1}}}"#,
            ),
        ));
        let refused = refusal(run(&g, &p, &tool_call("t", json!({"a": 1, "b": 2}))));
        assert_eq!(refused.code, "loop_detected");
    }

    #[test]
    fn the_rate_limit_answers_429_with_retry_after() {
        let g = governance("[budget]\nrate = { calls = 1, per_secs = 30 }");
        let p = principal(json!({}));
        admitted(run(&g, &p, &tool_call("t", json!({"n": 1}))));
        let response = refusal(run(&g, &p, &tool_call("t", json!({"n": 2})))).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "30");
    }

    #[test]
    fn a_batch_is_refused_whole_when_one_call_is() {
        let g = governance("[budget]\nmax_calls = 2");
        let p = principal(json!({}));
        let batch = |n: usize| {
            let calls: Vec<Value> = (0..n)
                .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "t", "arguments": {"i": i}}}))
                .collect();
            Bytes::from(Value::Array(calls).to_string())
        };
        assert_eq!(refusal(run(&g, &p, &batch(3))).code, "budget_exceeded");
        admitted(run(&g, &p, &batch(2)));
        assert_eq!(refusal(run(&g, &p, &batch(MAX_BATCH + 1))).code, "invalid_request", "too long to count");
    }

    #[test]
    fn content_findings_deny_redact_and_are_noted() {
        let g = governance("[content]");
        let p = principal(json!({}));
        let refused = refusal(run(&g, &p, &tool_call("t", json!({"key": "AKIAIOSFODNN7EXAMPLE"}))));
        assert_eq!(refused.code, "content_rejected");
        assert_eq!(
            refused.description,
            "the request body contains aws_access_key_id at /params/arguments/key; the request was not forwarded"
        );
        assert!(!refused.audit_detail.contains("AKIA"));
        let ok = admitted(run(&g, &p, &tool_call("t", json!({"to": "carol@example.com"}))));
        let forwarded: Value = serde_json::from_slice(&ok.body.unwrap()).unwrap();
        assert_eq!(forwarded["params"]["arguments"]["to"], "[REDACTED:email]");
        assert_eq!(ok.detail.as_deref(), Some("findings=email@/params/arguments/to(len=17,redact)"));
    }

    #[test]
    fn unscannable_bodies_follow_the_configuration() {
        let p = principal(json!({}));
        let calls = [];
        let inbound = |principal| Inbound {
            principal,
            agent: None,
            http_method: "POST",
            path: "/",
            session: SessionKey { agent: "a".into(), subject: "s".into() },
            mcp_session: None,
            body: Body::Unscannable,
            calls: &calls,
            messages: 0,
        };
        assert!(matches!(governance("[content]").evaluate(&inbound(&p)), Decision::Admit(_)));
        let strict = governance("[content]\nunscanned = \"deny\"");
        assert_eq!(refusal(strict.evaluate(&inbound(&p))).code, "content_unscannable");
    }

    #[test]
    fn binding_messages_are_short_and_printable() {
        let long = "x".repeat(500);
        let message = binding_message(&["a\u{1}b", &long], RESOURCE);
        assert!(message.starts_with("Call ab, xxx"));
        assert_eq!(message.chars().count(), MAX_BINDING_MESSAGE);
        assert!(!message.chars().any(char::is_control));
    }

    #[test]
    fn mcp_session_ids_are_bounded() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(mcp_session_id(&headers).unwrap(), None);
        headers.insert(MCP_SESSION_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(mcp_session_id(&headers).unwrap(), Some("abc-123"));
        headers.insert(MCP_SESSION_HEADER, HeaderValue::from_str(&"x".repeat(129)).unwrap());
        assert!(mcp_session_id(&headers).is_err());
        headers.insert(MCP_SESSION_HEADER, HeaderValue::from_static("a b"));
        assert!(mcp_session_id(&headers).is_err());
    }

    const CRM_POLICIES: &str = r#"
@id("read-tools")
permit(principal is Mandate::Agent, action == Mandate::Action::"call", resource == Mandate::Tool::"read_records");
@id("sql-read")
permit(principal is Mandate::Agent, action == Mandate::Action::"call", resource == Mandate::Tool::"query");
@id("no-ddl")
forbid(principal, action == Mandate::Action::"call", resource == Mandate::Tool::"query")
  when { context.arguments_lower like "*drop table*" };
@id("export-needs-approval") @step_up("approval")
forbid(principal, action == Mandate::Action::"call", resource == Mandate::Tool::"export")
  unless { context.approved };
@id("export")
permit(principal, action == Mandate::Action::"call", resource == Mandate::Tool::"export");
@id("budget-by-policy")
forbid(principal, action == Mandate::Action::"call", resource == Mandate::Tool::"read_records")
  when { context.tool_calls >= 2 };
@id("mcp-plumbing")
permit(principal, action == Mandate::Action::"call", resource is Mandate::Resource);
"#;

    fn governed_by(config: &str, cedar: &str) -> Governance {
        let engine = PolicyEngine::empty();
        engine.replace(cedar).unwrap();
        governance(config).with_policy(Arc::new(engine))
    }

    #[test]
    fn cedar_allows_reads_refuses_deletes_and_ddl_and_names_the_deciding_policies() {
        let g = governed_by("[budget]\nmax_calls = 100", CRM_POLICIES);
        let p = principal(json!({}));
        let read = admitted(run(&g, &p, &tool_call("read_records", json!({"table": "customers"}))));
        assert!(read.detail.unwrap().contains("policy=allow ids=read-tools"));

        let delete = refusal(run(&g, &p, &tool_call("delete_records", json!({"table": "customers"}))));
        assert_eq!((delete.status, delete.code), (StatusCode::FORBIDDEN, "policy_denied"));
        assert!(delete.audit_detail.contains("policy=deny ids="), "{}", delete.audit_detail);

        let select = admitted(run(&g, &p, &tool_call("query", json!({"sql": "SELECT * FROM customers"}))));
        assert!(select.detail.unwrap().contains("ids=sql-read"));
        let ddl = refusal(run(&g, &p, &tool_call("query", json!({"sql": "drop TABLE customers"}))));
        assert_eq!(ddl.code, "policy_denied");
        assert!(ddl.description.contains("no-ddl") && ddl.audit_detail.contains("ids=no-ddl"));
        assert!(!ddl.audit_detail.contains("customers"), "arguments never reach the audit detail");
    }

    #[test]
    fn cedar_sees_the_budget_counters() {
        let g = governed_by("[budget]\nmax_calls = 100", CRM_POLICIES);
        let p = principal(json!({}));
        for _ in 0..2 {
            admitted(run(&g, &p, &tool_call("read_records", json!({"n": 1}))));
        }
        let third = refusal(run(&g, &p, &tool_call("read_records", json!({"n": 1}))));
        assert!(third.audit_detail.contains("budget-by-policy"), "{}", third.audit_detail);
    }

    #[test]
    fn a_step_up_policy_asks_for_approval_and_an_approval_for_that_call_passes() {
        let g = governed_by("", CRM_POLICIES);
        let asked = refusal(run(&g, &principal(json!({})), &tool_call("export", json!({"format": "csv"}))));
        assert_eq!(asked.code, "approval_required");
        assert!(asked.audit_detail.contains("export-needs-approval"), "{}", asked.audit_detail);
        let detail = asked.extra["authorization_details"][0].clone();
        let approved = principal(json!({"jti": "approval-1", "authorization_details": [detail]}));
        let passed = admitted(run(&g, &approved, &tool_call("export", json!({"format": "csv"}))));
        assert!(passed.detail.unwrap().contains("approved=true"));
        let other = principal(
            json!({"jti": "approval-2", "authorization_details": [asked.extra["authorization_details"][0].clone()]}),
        );
        let refused = refusal(run(&g, &other, &tool_call("export", json!({"format": "json"}))));
        assert_eq!(refused.code, "invalid_approval", "an approval names one exact call");
    }

    #[test]
    fn without_an_active_policy_set_nothing_is_decided_by_policy() {
        let g = governance("").with_policy(Arc::new(PolicyEngine::empty()));
        let passed = admitted(run(&g, &principal(json!({})), &tool_call("delete_records", json!({}))));
        assert!(passed.detail.is_none_or(|d| !d.contains("policy=")));
    }
}
