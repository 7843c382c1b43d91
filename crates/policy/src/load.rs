//! Turning policy text into an active set: parse, apply Mandate's rules (`@id` ids, `@step_up`
//! annotations, no templates, size bounds), validate strictly against the schema, and render any
//! failure as the parser's or validator's message with `source:line:column` locations.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Policy, PolicyId, PolicySet, PrincipalConstraint, ResourceConstraint, ValidationMode,
    ValidationWarning,
};
use miette::Diagnostic;

use crate::PolicyError;
use crate::request::ContextUse;
use crate::schema::validator;
use crate::slice::without_head;

/// Largest policy text accepted (all files of a directory together).
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// Most policies in one set.
pub const MAX_POLICIES: usize = 10_000;
/// Longest `@id` value.
pub const MAX_ID_LEN: usize = 128;
/// The annotation naming a policy; its value becomes the policy id reported in decisions.
pub const ID_ANNOTATION: &str = "id";
/// The annotation marking a forbid that human approval can lift; its only valid value is
/// [`STEP_UP_APPROVAL`].
pub const STEP_UP_ANNOTATION: &str = "step_up";
/// The one supported `@step_up` value.
pub const STEP_UP_APPROVAL: &str = "approval";

/// Policy text with the names and start offsets of the files it was assembled from, so that
/// byte offsets in Cedar's diagnostics can be reported as `file:line:column`.
#[derive(Debug, Clone)]
pub(crate) struct SourceText {
    pub(crate) text: String,
    /// (name, byte offset where this part starts), ascending by offset; never empty.
    parts: Vec<(String, usize)>,
}

impl SourceText {
    pub(crate) fn single(name: &str, text: &str) -> Self {
        Self { text: text.to_owned(), parts: vec![(name.to_owned(), 0)] }
    }

    /// Concatenates files in the given order; each starts on a fresh line after a `// file:`
    /// comment, so the assembled text stays valid Cedar and can be submitted again as is.
    pub(crate) fn from_files(files: &[(String, String)]) -> Self {
        let mut text = String::new();
        let mut parts = Vec::with_capacity(files.len().max(1));
        for (name, body) in files {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            let _ = writeln!(text, "// file: {name}");
            parts.push((name.clone(), text.len()));
            text.push_str(body);
        }
        if parts.is_empty() {
            parts.push(("<empty>".to_owned(), 0));
        }
        Self { text, parts }
    }

    /// `name:line:column` (1-based) of a byte offset into the assembled text.
    fn locate(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let (name, start) = self
            .parts
            .iter()
            .rev()
            .find(|(_, start)| *start <= offset)
            .map(|(name, start)| (name.as_str(), *start))
            .unwrap_or(("<policy>", 0));
        let before = self.text.as_bytes().get(start..offset).unwrap_or_default();
        let line = 1 + before.iter().filter(|b| **b == b'\n').count();
        let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = 1 + String::from_utf8_lossy(&before[line_start..]).chars().count();
        format!("{name}:{line}:{column}")
    }

    /// One diagnostic as text: message, labelled locations, help.
    fn render(&self, diagnostic: &dyn Diagnostic) -> String {
        let mut out = diagnostic.to_string();
        if let Some(labels) = diagnostic.labels() {
            for label in labels {
                let _ = write!(out, " [at {}", self.locate(label.offset()));
                if let Some(text) = label.label() {
                    let _ = write!(out, ": {text}");
                }
                out.push(']');
            }
        }
        if let Some(help) = diagnostic.help() {
            let _ = write!(out, " (help: {help})");
        }
        out
    }
}

/// The scope ("head") of one policy: what the slicer compares against a request.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) principal: PrincipalConstraint,
    pub(crate) action: ActionConstraint,
    pub(crate) resource: ResourceConstraint,
}

/// A parsed, renamed and validated policy set, ready to be activated.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) set: PolicySet,
    /// Policies in source order with their heads (index-aligned with `ids`).
    pub(crate) policies: Vec<Policy>,
    pub(crate) heads: Vec<Head>,
    /// Context attributes each policy reads (index-aligned with `policies`).
    pub(crate) context_uses: Vec<ContextUse>,
    /// Each policy without its head, what slices evaluate (index-aligned with `policies`).
    pub(crate) headless: Vec<Policy>,
    pub(crate) ids: Vec<String>,
    /// Ids of the forbids annotated `@step_up("approval")`.
    pub(crate) step_up: HashSet<PolicyId>,
    pub(crate) warnings: Vec<String>,
}

fn invalid(message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(message.into())
}

/// Position of a parser-generated id (`policy17` → 17) so policies keep their source order.
fn generated_index(id: &PolicyId) -> usize {
    id.to_string().strip_prefix("policy").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX)
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')) {
        return Err("may contain only ASCII letters, digits and . _ - : /".to_owned());
    }
    Ok(())
}

/// Parses and validates `source`; the set is not activated here.
pub(crate) fn compile(source: &SourceText) -> Result<Compiled, PolicyError> {
    if source.text.len() > MAX_SOURCE_BYTES {
        return Err(invalid(format!("policy text is {} bytes, the limit is {MAX_SOURCE_BYTES}", source.text.len())));
    }
    let parsed = PolicySet::from_str(&source.text).map_err(|errors| {
        let messages: Vec<String> = errors.iter().map(|e| source.render(e as &dyn Diagnostic)).collect();
        invalid(format!("parse error: {}", messages.join("; ")))
    })?;
    if parsed.num_of_templates() > 0 {
        let located: Vec<String> = parsed.templates().map(|t| format!("`{}`", t.id())).collect();
        return Err(invalid(format!(
            "templates (policies with ?principal or ?resource slots) are not supported: {}",
            located.join(", ")
        )));
    }
    let mut parsed_policies: Vec<Policy> = parsed.policies().cloned().collect();
    if parsed_policies.len() > MAX_POLICIES {
        return Err(invalid(format!("{} policies, the limit is {MAX_POLICIES}", parsed_policies.len())));
    }
    parsed_policies.sort_by_key(|p| generated_index(p.id()));

    let mut set = PolicySet::new();
    let mut policies = Vec::with_capacity(parsed_policies.len());
    let mut ids = Vec::with_capacity(parsed_policies.len());
    let mut step_up = HashSet::new();
    let mut problems = Vec::new();
    for policy in parsed_policies {
        let generated = policy.id().to_string();
        let policy = match policy.annotation(ID_ANNOTATION) {
            Some(id) => match check_id(id) {
                Ok(()) => policy.new_id(PolicyId::new(id)),
                Err(why) => {
                    problems.push(format!("policy `{generated}`: @id(\"{id}\") {why}"));
                    continue;
                }
            },
            None => policy,
        };
        let id = policy.id().clone();
        if let Some(value) = policy.annotation(STEP_UP_ANNOTATION) {
            if value != STEP_UP_APPROVAL {
                problems.push(format!(
                    "policy `{id}`: @step_up(\"{value}\") is not supported, only @step_up(\"{STEP_UP_APPROVAL}\")"
                ));
            } else if policy.effect() != cedar_policy::Effect::Forbid {
                problems.push(format!("policy `{id}`: @step_up applies only to forbid policies"));
            } else {
                step_up.insert(id.clone());
            }
        }
        if let Err(error) = set.add(policy.clone()) {
            problems.push(format!("policy `{id}`: {error}"));
            continue;
        }
        ids.push(id.to_string());
        policies.push(policy);
    }
    if !problems.is_empty() {
        return Err(invalid(problems.join("; ")));
    }

    let result = validator().validate(&set, ValidationMode::Strict);
    // A policy that can never apply (no action fits its scope, or its condition is always false)
    // is a mistake in an authorisation policy, so those warnings reject the set like errors do.
    let never_applies = |w: &&ValidationWarning| {
        matches!(w, ValidationWarning::ImpossiblePolicy(_) | ValidationWarning::InvalidActionApplication(_))
    };
    let errors: Vec<String> = result
        .validation_errors()
        .map(|e| source.render(e as &dyn Diagnostic))
        .chain(result.validation_warnings().filter(never_applies).map(|w| source.render(w as &dyn Diagnostic)))
        .collect();
    if !errors.is_empty() {
        return Err(invalid(format!("schema validation failed: {}", errors.join("; "))));
    }
    let warnings = result
        .validation_warnings()
        .filter(|w| !never_applies(w))
        .map(|w| source.render(w as &dyn Diagnostic))
        .collect();

    let heads = policies
        .iter()
        .map(|p| Head {
            principal: p.principal_constraint(),
            action: p.action_constraint(),
            resource: p.resource_constraint(),
        })
        .collect();
    let mut context_uses = Vec::with_capacity(policies.len());
    let mut headless = Vec::with_capacity(policies.len());
    for policy in &policies {
        // Both derived from the policy's JSON form; a policy Cedar cannot render reads the whole
        // context and keeps its head (evaluating a true head costs time, not correctness).
        match policy.to_json() {
            Ok(json) => {
                context_uses.push(ContextUse::of_json(&json));
                headless.push(without_head(policy, json).unwrap_or_else(|| policy.clone()));
            }
            Err(_) => {
                context_uses.push(ContextUse::ALL);
                headless.push(policy.clone());
            }
        }
    }
    Ok(Compiled { set, policies, heads, context_uses, headless, ids, step_up, warnings })
}
