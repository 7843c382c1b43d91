//! The request side of a decision: [`PolicyRequest`] as callers fill it from the token and the
//! HTTP/MCP request, and its conversion into Cedar uids, entities and the context record of the
//! schema (including the bounded flattening of MCP tool-call arguments).

use std::collections::HashSet;
use std::fmt::Write as _;

use cedar_policy::{Context, Entities, Entity, EntityId, EntityUid, RestrictedExpression};
use serde_json::Value;

use crate::PolicyError;
use crate::schema::names;

/// Longest canonical JSON text of a tool call's arguments that is evaluated; larger arguments
/// deny the request (with an error) rather than being truncated past a forbid pattern.
pub const MAX_ARGUMENTS_BYTES: usize = 256 * 1024;
/// Most string leaves collected into `context.argument_values`; more deny the request.
pub const MAX_ARGUMENT_VALUES: usize = 4096;
/// Deepest nesting of arguments walked; deeper arguments deny the request.
pub const MAX_ARGUMENTS_DEPTH: usize = 64;

/// The Cedar action of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Token issuance (`Mandate::Action::"issue"`).
    Issue,
    /// Token exchange, RFC 8693 (`Mandate::Action::"exchange"`).
    Exchange,
    /// A request to a protected resource through the gateway (`Mandate::Action::"call"`).
    Call,
}

impl Action {
    /// The action's id in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Issue => "issue",
            Action::Exchange => "exchange",
            Action::Call => "call",
        }
    }

    pub(crate) fn uid(self) -> &'static EntityUid {
        let names = names();
        match self {
            Action::Issue => &names.issue,
            Action::Exchange => &names.exchange,
            Action::Call => &names.call,
        }
    }
}

/// Counters from the gateway's budgets; 0 when unknown.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Calls in the session.
    pub calls: i64,
    /// Calls of this tool in the session.
    pub tool_calls: i64,
    /// Spend so far, in the budget's unit.
    pub spend: i64,
    /// Repetitions of the same call.
    pub repeats: i64,
}

/// Everything a decision needs, built by callers from the token and the request.
#[derive(Debug, Clone)]
pub struct PolicyRequest<'a> {
    pub action: Action,
    /// The acting agent's SPIFFE ID when an agent acts (principal = Agent), else None.
    pub agent: Option<&'a str>,
    /// OAuth client_id (principal = Client when there is no agent).
    pub client_id: &'a str,
    /// Owner responsible (agent's owner), if known.
    pub owner: Option<&'a str>,
    /// The principal the token acts for (`sub`), e.g. "alice" — goes into context.subject.
    pub subject: Option<&'a str>,
    /// Resource URI (the token's audience / the gateway's resource).
    pub resource: &'a str,
    /// For Action::Call on an MCP tools/call: the tool name (resource = Tool entity, parent = the Resource).
    pub tool: Option<&'a str>,
    pub scopes: &'a [String],
    /// grant type for Issue/Exchange ("client_credentials", "authorization_code", ...), "" for Call.
    pub grant_type: &'a str,
    /// Call only: MCP method ("tools/call"), HTTP method and path.
    pub mcp_method: Option<&'a str>,
    pub http_method: &'a str,
    pub path: &'a str,
    /// Call only: the tool call's `arguments` JSON (object), exposed as `context.arguments`,
    /// `context.arguments_lower` and `context.argument_values`.
    pub arguments: Option<&'a Value>,
    /// Counters from the gateway's budgets: calls in session, calls of this tool, spend; 0 when unknown.
    pub counters: Counters,
    /// Kinds of content findings in the body ("aws_access_key", "email", ...).
    pub findings: &'a [String],
    /// True when the request carries an approval (CIBA token) that names exactly this action.
    pub approved: bool,
}

/// The scope of a request: principal, action and resource uids with their parents. It decides
/// which policies can apply (slicing) and which entities the evaluation sees.
pub(crate) struct Scope {
    pub(crate) principal: EntityUid,
    pub(crate) principal_parent: Option<EntityUid>,
    pub(crate) action: EntityUid,
    pub(crate) resource: EntityUid,
    pub(crate) resource_parent: Option<EntityUid>,
}

/// The tool entity exists only for a call naming a tool; issuance and exchange are about the
/// resource as a whole (the schema allows only `Resource` for them).
fn tool_of<'a>(request: &PolicyRequest<'a>) -> Option<&'a str> {
    match request.action {
        Action::Call => request.tool,
        Action::Issue | Action::Exchange => None,
    }
}

/// A collision-free cache key for the request's scope: every part length-prefixed.
pub(crate) fn scope_key(request: &PolicyRequest<'_>) -> String {
    let (kind, principal) = match request.agent {
        Some(agent) => ('A', agent),
        None => ('C', request.client_id),
    };
    let parts = [Some(principal), request.owner, Some(request.resource), tool_of(request)];
    let mut key = String::with_capacity(16 + parts.iter().flatten().map(|p| p.len() + 8).sum::<usize>());
    key.push_str(request.action.as_str());
    key.push(kind);
    for part in parts {
        match part {
            Some(text) => {
                let _ = write!(key, "{}:", text.len());
                key.push_str(text);
            }
            None => key.push('-'),
        }
    }
    key
}

impl Scope {
    pub(crate) fn of(request: &PolicyRequest<'_>) -> Self {
        let names = names();
        let principal = match request.agent {
            Some(agent) => EntityUid::from_type_name_and_id(names.agent.clone(), EntityId::new(agent)),
            None => EntityUid::from_type_name_and_id(names.client.clone(), EntityId::new(request.client_id)),
        };
        let principal_parent =
            request.owner.map(|owner| EntityUid::from_type_name_and_id(names.owner.clone(), EntityId::new(owner)));
        let resource_uid = EntityUid::from_type_name_and_id(names.resource.clone(), EntityId::new(request.resource));
        let (resource, resource_parent) = match tool_of(request) {
            Some(tool) => {
                (EntityUid::from_type_name_and_id(names.tool.clone(), EntityId::new(tool)), Some(resource_uid))
            }
            None => (resource_uid, None),
        };
        Scope { principal, principal_parent, action: request.action.uid().clone(), resource, resource_parent }
    }

    /// The entities of the evaluation: principal and resource with their parents. Entities carry
    /// no attributes; request data lives in the context.
    pub(crate) fn entities(&self) -> Result<Entities, PolicyError> {
        let mut entities = Vec::with_capacity(4);
        entities.push(Entity::new_no_attrs(self.principal.clone(), self.principal_parent.iter().cloned().collect()));
        if let Some(owner) = &self.principal_parent {
            entities.push(Entity::new_no_attrs(owner.clone(), HashSet::new()));
        }
        entities.push(Entity::new_no_attrs(self.resource.clone(), self.resource_parent.iter().cloned().collect()));
        if let Some(resource) = &self.resource_parent {
            entities.push(Entity::new_no_attrs(resource.clone(), HashSet::new()));
        }
        Entities::from_entities(entities, None).map_err(|e| PolicyError::Request(format!("entities: {e}")))
    }
}

/// Tool-call arguments flattened for policies.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FlatArguments {
    /// Canonical JSON: object keys sorted, no insignificant whitespace.
    pub(crate) canonical: String,
    /// Every string leaf value (object keys excluded), in document order.
    pub(crate) values: Vec<String>,
}

/// Flattens `arguments` within the bounds; `Err` names the bound that was exceeded.
pub(crate) fn flatten_arguments(arguments: &Value) -> Result<FlatArguments, String> {
    let mut flat = FlatArguments::default();
    write_canonical(arguments, 0, &mut flat)?;
    Ok(flat)
}

fn write_canonical(value: &Value, depth: usize, flat: &mut FlatArguments) -> Result<(), String> {
    if depth > MAX_ARGUMENTS_DEPTH {
        return Err(format!("arguments nest deeper than {MAX_ARGUMENTS_DEPTH} levels"));
    }
    match value {
        Value::Null => flat.canonical.push_str("null"),
        Value::Bool(b) => flat.canonical.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(flat.canonical, "{n}");
        }
        Value::String(s) => {
            if flat.values.len() >= MAX_ARGUMENT_VALUES {
                return Err(format!("arguments hold more than {MAX_ARGUMENT_VALUES} string values"));
            }
            write_json_string(s, &mut flat.canonical);
            flat.values.push(s.clone());
        }
        Value::Array(items) => {
            flat.canonical.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    flat.canonical.push(',');
                }
                write_canonical(item, depth + 1, flat)?;
            }
            flat.canonical.push(']');
        }
        Value::Object(map) => {
            // Sorted keys whatever serde_json's map order is (`preserve_order` may be enabled
            // by another crate in the build), so one argument set has one text.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            flat.canonical.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    flat.canonical.push(',');
                }
                write_json_string(key, &mut flat.canonical);
                flat.canonical.push(':');
                write_canonical(item, depth + 1, flat)?;
            }
            flat.canonical.push('}');
        }
    }
    if flat.canonical.len() > MAX_ARGUMENTS_BYTES {
        return Err(format!("arguments exceed {MAX_ARGUMENTS_BYTES} bytes"));
    }
    Ok(())
}

/// JSON string literal as serde_json writes it (same escapes as the wire format).
fn write_json_string(text: &str, out: &mut String) {
    match serde_json::to_string(text) {
        Ok(quoted) => out.push_str(&quoted),
        // Serialising a &str cannot fail; keep a quoted form anyway rather than panic.
        Err(_) => {
            let _ = write!(out, "{text:?}");
        }
    }
}

fn string_set<'s>(items: impl IntoIterator<Item = &'s str>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.into_iter().map(|s| RestrictedExpression::new_string(s.to_owned())))
}

/// Positions in [`CONTEXT_ATTRIBUTES`] the code refers to by name.
const ARGUMENTS: usize = 8;
const ARGUMENTS_LOWER: usize = 9;
const ARGUMENT_VALUES: usize = 10;
const APPROVED: usize = 16;

/// The context attributes of the schema, in the order of [`ContextUse`] bits.
pub(crate) const CONTEXT_ATTRIBUTES: [&str; 17] = [
    "scopes",
    "grant_type",
    "subject",
    "client_id",
    "mcp_method",
    "http_method",
    "path",
    "tool",
    "arguments",
    "arguments_lower",
    "argument_values",
    "calls",
    "tool_calls",
    "spend",
    "repeats",
    "findings",
    "approved",
];

/// Which context attributes a set of policies can read (one bit per [`CONTEXT_ATTRIBUTES`]
/// entry). Building only those is what keeps a sliced decision cheap; a policy that uses
/// `context` other than through `.attr` / `has attr` reads everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContextUse(u32);

impl ContextUse {
    pub(crate) const NONE: ContextUse = ContextUse(0);
    pub(crate) const ALL: ContextUse = ContextUse((1 << CONTEXT_ATTRIBUTES.len()) - 1);

    pub(crate) fn union(self, other: ContextUse) -> ContextUse {
        ContextUse(self.0 | other.0)
    }

    fn has(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    /// Whether `context.approved` is read (the one attribute the approval re-check changes).
    pub(crate) fn reads_approved(self) -> bool {
        self.has(APPROVED)
    }

    /// The attributes `policy` reads, from its JSON form (names there are unescaped).
    #[cfg(test)]
    pub(crate) fn of_policy(policy: &cedar_policy::Policy) -> ContextUse {
        policy.to_json().map_or(ContextUse::ALL, |json| ContextUse::of_json(&json))
    }

    /// The attributes read by the policy whose JSON form ([`cedar_policy::Policy::to_json`]) is
    /// `policy`.
    pub(crate) fn of_json(policy: &Value) -> ContextUse {
        let mut used = ContextUse::NONE;
        if scan_context_use(policy, &mut used) { used } else { ContextUse::ALL }
    }
}

fn is_context_var(value: &Value) -> bool {
    value.get("Var").and_then(Value::as_str) == Some("context")
}

/// Records attribute reads of `context` in `used`; false when `context` is used in any other
/// way (or an attribute outside the schema is named), meaning every attribute is needed.
fn scan_context_use(value: &Value, used: &mut ContextUse) -> bool {
    match value {
        Value::Object(map) => {
            if is_context_var(value) {
                return false;
            }
            for (key, inner) in map {
                if (key == "." || key == "has")
                    && let Some(left) = inner.get("left")
                    && is_context_var(left)
                {
                    let attr = inner.get("attr").and_then(Value::as_str);
                    match attr.and_then(|a| CONTEXT_ATTRIBUTES.iter().position(|n| *n == a)) {
                        Some(index) => used.0 |= 1 << index,
                        None => return false,
                    }
                    continue;
                }
                if !scan_context_use(inner, used) {
                    return false;
                }
            }
            true
        }
        Value::Array(items) => items.iter().all(|item| scan_context_use(item, used)),
        _ => true,
    }
}

/// The context record of the schema for `request`; `approved` overrides the request's flag
/// (the step-up check re-evaluates with an approval).
pub fn context(request: &PolicyRequest<'_>, approved: bool) -> Result<Context, PolicyError> {
    context_for(request, approved, ContextUse::ALL)
}

/// The context with only the attributes in `used`: policies that do not read an attribute
/// cannot tell it is missing, so the decision is the same as with the full record.
pub(crate) fn context_for(
    request: &PolicyRequest<'_>,
    approved: bool,
    used: ContextUse,
) -> Result<Context, PolicyError> {
    let needs_arguments = used.has(ARGUMENTS) || used.has(ARGUMENTS_LOWER) || used.has(ARGUMENT_VALUES);
    let flat = match request.arguments.filter(|_| needs_arguments) {
        Some(arguments) => flatten_arguments(arguments).map_err(PolicyError::Request)?,
        None => FlatArguments::default(),
    };
    let text = |s: &str| RestrictedExpression::new_string(s.to_owned());
    let mut flat = Some(flat);
    // Handed to Cedar as an iterator, not collected first: a vector of 17 pairs is too large
    // for the allocator's per-thread cache, and taking it from the shared heap showed in the tail.
    let pairs = CONTEXT_ATTRIBUTES.iter().enumerate().filter(|(index, _)| used.has(*index)).map(|(index, name)| {
        let value = match index {
            0 => string_set(request.scopes.iter().map(String::as_str)),
            1 => text(request.grant_type),
            2 => text(request.subject.unwrap_or_default()),
            3 => text(request.client_id),
            4 => text(request.mcp_method.unwrap_or_default()),
            5 => text(request.http_method),
            6 => text(request.path),
            7 => text(request.tool.unwrap_or_default()),
            ARGUMENTS => text(flat.as_ref().map_or("", |f| f.canonical.as_str())),
            ARGUMENTS_LOWER => {
                RestrictedExpression::new_string(flat.as_ref().map_or(String::new(), |f| f.canonical.to_lowercase()))
            }
            ARGUMENT_VALUES => RestrictedExpression::new_set(
                flat.take().map(|f| f.values).unwrap_or_default().into_iter().map(RestrictedExpression::new_string),
            ),
            11 => RestrictedExpression::new_long(request.counters.calls),
            12 => RestrictedExpression::new_long(request.counters.tool_calls),
            13 => RestrictedExpression::new_long(request.counters.spend),
            14 => RestrictedExpression::new_long(request.counters.repeats),
            15 => string_set(request.findings.iter().map(String::as_str)),
            _ => RestrictedExpression::new_bool(approved),
        };
        ((*name).to_owned(), value)
    });
    Context::from_pairs(pairs).map_err(|e| PolicyError::Request(format!("context: {e}")))
}

/// The Cedar request and entities Mandate evaluates for `request`, for comparing with plain
/// Cedar (benchmarks, tests); [`crate::PolicyEngine::decide`] builds the same values.
pub fn to_cedar(request: &PolicyRequest<'_>) -> Result<(cedar_policy::Request, Entities), PolicyError> {
    let scope = Scope::of(request);
    let entities = scope.entities()?;
    let cedar = cedar_policy::Request::new(
        scope.principal,
        scope.action,
        scope.resource,
        context(request, request.approved)?,
        None,
    )
    .map_err(|e| PolicyError::Request(e.to_string()))?;
    Ok((cedar, entities))
}
