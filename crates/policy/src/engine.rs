//! [`PolicyEngine`]: the active, validated policy set (swapped atomically on replace, the old set
//! kept when a new one is invalid) and the decision procedure over sliced policy sets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cedar_policy::{Authorizer, Context, PolicyId, PolicySet, Request, Response};
use parking_lot::RwLock;

use crate::PolicyError;
use crate::load::{Compiled, MAX_SOURCE_BYTES, SourceText, compile};
use crate::request::{PolicyRequest, Scope, context_for, scope_key, to_cedar};
use crate::slice::{ApprovalCheck, Slice, SliceCache, build_slice};

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the policies that determined the decision (Cedar diagnostics reason), in source
    /// order; empty = default deny (no permit applied and no forbid did).
    pub policy_ids: Vec<String>,
    /// Set when the request is denied only by forbids annotated `@step_up("approval")` and the
    /// same request with an approval (`approved = true`) would be allowed: the caller should ask
    /// for human approval (CIBA) instead of refusing outright.
    pub step_up: bool,
    /// Evaluation errors (Cedar diagnostics errors), as strings; errors never allow.
    pub errors: Vec<String>,
}

impl Decision {
    fn refused_with_error(error: String) -> Self {
        Decision { allowed: false, policy_ids: Vec::new(), step_up: false, errors: vec![error] }
    }

    /// The deciding policy ids as one audit-friendly string (`a,b`), or `default-deny`.
    pub fn policies_for_audit(&self) -> String {
        if self.policy_ids.is_empty() { "default-deny".to_owned() } else { self.policy_ids.join(",") }
    }

    /// The note an audit event carries for this decision: `policy=allow|deny ids=…` (and the
    /// number of evaluation errors, if any).
    pub fn audit_note(&self) -> String {
        let verdict = if self.allowed { "allow" } else { "deny" };
        let mut note = format!("policy={verdict} ids={}", self.policies_for_audit());
        if !self.errors.is_empty() {
            note.push_str(&format!(" errors={}", self.errors.len()));
        }
        note
    }

    /// Why policy refused, for the refused caller: the deciding policies, or that none permits it.
    pub fn refusal(&self) -> String {
        if self.policy_ids.is_empty() {
            "denied by policy: no policy permits this request".to_owned()
        } else {
            format!("denied by policy {}", self.policy_ids.join(", "))
        }
    }
}

/// What a successful load or validation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    pub policies: usize,
    /// Policy ids in source order (`@id` values, else Cedar's `policyN`).
    pub ids: Vec<String>,
    /// Validator warnings (e.g. confusable characters); they do not prevent loading.
    pub warnings: Vec<String>,
}

impl From<&Compiled> for PolicySummary {
    fn from(compiled: &Compiled) -> Self {
        PolicySummary { policies: compiled.ids.len(), ids: compiled.ids.clone(), warnings: compiled.warnings.clone() }
    }
}

/// A validated set in use, with its slice cache (a replace starts with an empty cache).
struct Active {
    compiled: Compiled,
    source: String,
    /// Source position of each policy id, to report reasons in a stable order.
    order: HashMap<PolicyId, usize>,
    slices: SliceCache,
}

impl Active {
    fn new(compiled: Compiled, source: String) -> Self {
        let order = compiled.policies.iter().enumerate().map(|(i, p)| (p.id().clone(), i)).collect();
        Active { compiled, source, order, slices: SliceCache::default() }
    }

    fn decision(&self, response: &Response) -> Decision {
        let mut reasons: Vec<(usize, &PolicyId)> =
            response.diagnostics().reason().map(|id| (self.order.get(id).copied().unwrap_or(usize::MAX), id)).collect();
        reasons.sort_by_key(|(position, _)| *position);
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            // The id text kept at load (PolicyId's Display escapes it character by character).
            policy_ids: reasons
                .iter()
                .map(|(position, id)| self.compiled.ids.get(*position).cloned().unwrap_or_else(|| id.to_string()))
                .collect(),
            step_up: false,
            errors: response.diagnostics().errors().map(|e| e.to_string()).collect(),
        }
    }

    /// A deny decided only by step-up forbids, for a request not yet approved.
    fn step_up_candidate(&self, decision: &Decision, request: &PolicyRequest<'_>) -> bool {
        !decision.allowed
            && !request.approved
            && !decision.policy_ids.is_empty()
            && decision.policy_ids.iter().all(|id| self.compiled.step_up.contains(&PolicyId::new(id.as_str())))
    }

    /// Whether every deciding policy reads `context.approved`. One that does not would apply
    /// again with an approval, so the deny would stand whatever the re-check found.
    fn reasons_read_approved(&self, decision: &Decision) -> bool {
        decision.policy_ids.iter().all(|id| {
            self.order
                .get(&PolicyId::new(id.as_str()))
                .and_then(|index| self.compiled.context_uses.get(*index))
                .is_some_and(|used| used.reads_approved())
        })
    }
}

/// Decides policy requests against the current validated policy set.
pub struct PolicyEngine {
    active: RwLock<Option<Arc<Active>>>,
    authorizer: Authorizer,
}

impl Default for PolicyEngine {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let active = self.active.read();
        f.debug_struct("PolicyEngine").field("policies", &active.as_ref().map(|a| a.compiled.ids.len())).finish()
    }
}

impl PolicyEngine {
    /// An engine without policies: `is_active()` is false.
    pub fn empty() -> Self {
        PolicyEngine { active: RwLock::new(None), authorizer: Authorizer::new() }
    }

    /// False when no policy set is loaded (callers then skip policy evaluation).
    pub fn is_active(&self) -> bool {
        self.active.read().is_some()
    }

    fn current(&self) -> Option<Arc<Active>> {
        self.active.read().clone()
    }

    fn activate(&self, source: SourceText) -> Result<PolicySummary, PolicyError> {
        let compiled = compile(&source)?;
        let summary = PolicySummary::from(&compiled);
        *self.active.write() = Some(Arc::new(Active::new(compiled, source.text)));
        Ok(summary)
    }

    /// Parses and strictly validates `source` against [`crate::SCHEMA`] and makes it the active
    /// set. On any error the previous set stays active and the error carries the parser's or
    /// validator's message with policy ids and locations.
    pub fn replace(&self, source: &str) -> Result<PolicySummary, PolicyError> {
        self.activate(SourceText::single("<policy>", source))
    }

    /// Loads a `.cedar` file, or every `*.cedar` file of a directory (not recursive, in file
    /// name order), as one set; validated and activated like [`PolicyEngine::replace`].
    pub fn load_file(&self, path: &Path) -> Result<PolicySummary, PolicyError> {
        self.activate(read_source(path)?)
    }

    /// The active policy text (for a directory, the files joined with `// file:` comments);
    /// None when no set is loaded.
    pub fn source(&self) -> Option<String> {
        self.current().map(|active| active.source.clone())
    }

    /// Ids of the active policies in source order (empty when none is loaded).
    pub fn policy_ids(&self) -> Vec<String> {
        self.current().map(|active| active.compiled.ids.clone()).unwrap_or_default()
    }

    /// Decides `request` over the policies whose heads can match it (see [`crate::slice`]);
    /// identical to evaluating the whole set. Without an active set this is a default deny.
    pub fn decide(&self, request: &PolicyRequest<'_>) -> Decision {
        let Some(active) = self.current() else {
            return Decision { allowed: false, policy_ids: Vec::new(), step_up: false, errors: Vec::new() };
        };
        let slice = match active
            .slices
            .get_or_build(scope_key(request), || build_slice(&active.compiled, Scope::of(request)))
        {
            Ok(slice) => slice,
            Err(error) => return Decision::refused_with_error(error.to_string()),
        };
        let context = match context_for(request, request.approved, slice.context_use) {
            Ok(context) => context,
            Err(error) => return Decision::refused_with_error(error.to_string()),
        };
        // The context is kept (a shared, reference-counted record) only when an approval
        // re-check is possible at all.
        let approval = slice.approval.as_ref().filter(|_| !request.approved).map(|check| (check, context.clone()));
        let mut decision = match self.evaluate(&active, &slice, &slice.policies, context) {
            Ok(decision) => decision,
            Err(error) => return Decision::refused_with_error(error.to_string()),
        };
        if active.step_up_candidate(&decision, request)
            && active.reasons_read_approved(&decision)
            && let Some((check, context)) = approval
        {
            // Only an approval that would turn this deny into an allow is worth asking for.
            decision.step_up = self.approval_would_allow(&active, &slice, check, request, context).unwrap_or(false);
        }
        decision
    }

    /// Whether the slice allows `request` with `approved = true`, given that without approval it
    /// was denied by forbids that all read `approved`. Policies that do not read `approved`
    /// decide as they did: the forbids among them did not apply (none is a reason), so what
    /// remains is whether, with an approval, no forbid reading `approved` applies and some
    /// permit does — one reading `approved`, or else any other (`unapproved` is the context the
    /// request was decided with).
    fn approval_would_allow(
        &self,
        active: &Active,
        slice: &Slice,
        check: &ApprovalCheck,
        request: &PolicyRequest<'_>,
        unapproved: Context,
    ) -> Result<bool, PolicyError> {
        let approved = context_for(request, true, check.context_use)?;
        let with_approval = self.evaluate(active, slice, &check.reading_approved, approved)?;
        if with_approval.allowed || !with_approval.policy_ids.is_empty() {
            // A permit reading `approved` applies and no forbid does, or a forbid still applies.
            return Ok(with_approval.allowed);
        }
        Ok(self.evaluate(active, slice, &check.other_permits, unapproved)?.allowed)
    }

    /// Reference evaluation over the whole active set, without slicing or caching; the result
    /// equals [`PolicyEngine::decide`]. For tests and benchmarks.
    pub fn decide_unsliced(&self, request: &PolicyRequest<'_>) -> Decision {
        let Some(active) = self.current() else {
            return Decision { allowed: false, policy_ids: Vec::new(), step_up: false, errors: Vec::new() };
        };
        let full = |approved: bool| -> Result<Decision, PolicyError> {
            let with_approval = PolicyRequest { approved, ..request.clone() };
            let (cedar, entities) = to_cedar(&with_approval)?;
            let response = self.authorizer.is_authorized(&cedar, &active.compiled.set, &entities);
            Ok(active.decision(&response))
        };
        let mut decision = match full(request.approved) {
            Ok(decision) => decision,
            Err(error) => return Decision::refused_with_error(error.to_string()),
        };
        if active.step_up_candidate(&decision, request) {
            decision.step_up = full(true).is_ok_and(|approved| approved.allowed);
        }
        decision
    }

    fn evaluate(
        &self,
        active: &Active,
        slice: &Slice,
        policies: &PolicySet,
        context: Context,
    ) -> Result<Decision, PolicyError> {
        let cedar = Request::new(slice.principal.clone(), slice.action.clone(), slice.resource.clone(), context, None)
            .map_err(|e| PolicyError::Request(e.to_string()))?;
        let response = self.authorizer.is_authorized(&cedar, policies, &slice.entities);
        Ok(active.decision(&response))
    }

    /// Number of request scopes with a cached slice (diagnostics and tests).
    pub fn cached_slices(&self) -> usize {
        self.current().map_or(0, |active| active.slices.len())
    }
}

/// Parses and strictly validates `source` without activating it (CLI `policy validate`).
pub fn validate(source: &str) -> Result<PolicySummary, PolicyError> {
    compile(&SourceText::single("<policy>", source)).map(|compiled| PolicySummary::from(&compiled))
}

/// Validates a file or directory like [`PolicyEngine::load_file`] without activating it.
pub fn validate_file(path: &Path) -> Result<PolicySummary, PolicyError> {
    compile(&read_source(path)?).map(|compiled| PolicySummary::from(&compiled))
}

fn io_error(path: &Path, source: std::io::Error) -> PolicyError {
    PolicyError::Io { path: path.to_path_buf(), source }
}

/// The text of a policy file or of a directory's `*.cedar` files, joined as [`PolicyEngine::load_file`]
/// would load them (for callers that store or submit the text).
pub fn read_policy_text(path: &Path) -> Result<String, PolicyError> {
    read_source(path).map(|source| source.text)
}

/// Reads a policy file or a directory's `*.cedar` files, refusing more than
/// [`MAX_SOURCE_BYTES`] in total before reading it.
fn read_source(path: &Path) -> Result<SourceText, PolicyError> {
    let metadata = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    let paths = if metadata.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| io_error(path, e))? {
            let entry = entry.map_err(|e| io_error(path, e))?;
            let file = entry.path();
            if file.extension().is_some_and(|ext| ext == "cedar") && file.is_file() {
                files.push(file);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(PolicyError::Invalid(format!("no *.cedar files in {}", path.display())));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut total = 0u64;
    for file in &paths {
        total += std::fs::metadata(file).map_err(|e| io_error(file, e))?.len();
    }
    if total > MAX_SOURCE_BYTES as u64 {
        return Err(PolicyError::Invalid(format!("policy files hold {total} bytes, the limit is {MAX_SOURCE_BYTES}")));
    }
    let mut files = Vec::with_capacity(paths.len());
    for file in &paths {
        let text = std::fs::read_to_string(file).map_err(|e| io_error(file, e))?;
        let name = file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());
        files.push((name, text));
    }
    Ok(SourceText::from_files(&files))
}

#[cfg(test)]
impl PolicyEngine {
    /// The slice of the active set for `scope`, built afresh (not cached), for slicing tests.
    pub(crate) fn slice_for_tests(&self, scope: Scope) -> Result<Slice, PolicyError> {
        let active = self.current().ok_or_else(|| PolicyError::Invalid("no active policy set".to_owned()))?;
        build_slice(&active.compiled, scope)
    }
}
