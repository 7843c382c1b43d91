//! Policy slicing: which policies of the active set can apply to a request, decided from their
//! heads (principal/action/resource scope) alone, and a bounded cache of the sliced sets per
//! request scope so steady-state decisions do no slicing work.
//!
//! Equivalence: Cedar evaluates a policy as `head && conditions`, and a head is evaluated before
//! the conditions with `&&` short-circuiting. A policy left out here has a head that is false for
//! the request (against the same entity hierarchy the evaluation sees), so it could neither be
//! satisfied nor raise an error: the sliced set gives the same decision, reasons and errors as the
//! full set. A policy kept has a head that is true for the request, so the slice holds it without
//! its head ([`without_head`]): `true && conditions` and `conditions` evaluate alike.

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Effect, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint,
};
use parking_lot::RwLock;

use crate::PolicyError;
use crate::load::{Compiled, Head};
use crate::request::{ContextUse, Scope};

/// Scopes kept per cache generation; when the current generation is full it becomes the
/// previous one (entries used again are promoted), so the cache holds at most twice this many.
pub const SLICE_CACHE_GENERATION: usize = 4096;

/// The part of the active set that can apply to one request scope, with the scope's entities.
pub(crate) struct Slice {
    /// The policies whose heads match the scope, with their heads removed (see [`without_head`]).
    pub(crate) policies: PolicySet,
    /// The approval re-check of a step-up deny; None when the slice has no step-up forbid.
    pub(crate) approval: Option<ApprovalCheck>,
    pub(crate) entities: Entities,
    pub(crate) principal: EntityUid,
    pub(crate) action: EntityUid,
    pub(crate) resource: EntityUid,
    /// Context attributes the sliced policies read; only those are built per request.
    pub(crate) context_use: ContextUse,
}

/// The slice's policies split for the approval re-check (see `PolicyEngine::decide`): only
/// the ones that read `context.approved` can decide differently with an approval.
pub(crate) struct ApprovalCheck {
    /// The permits and forbids that read `approved`, evaluated again with `approved = true`.
    pub(crate) reading_approved: PolicySet,
    /// Context attributes `reading_approved` reads (including `approved`).
    pub(crate) context_use: ContextUse,
    /// The other permits: their outcome with an approval is their outcome without one.
    pub(crate) other_permits: PolicySet,
}

/// `uid` is `target` or has it as its (only possible) parent: Cedar's `in` over our two-level
/// hierarchies (Agent/Client in Owner, Tool in Resource).
fn is_in(uid: &EntityUid, parent: Option<&EntityUid>, target: &EntityUid) -> bool {
    uid == target || parent == Some(target)
}

fn type_is(uid: &EntityUid, type_name: &EntityTypeName) -> bool {
    uid.type_name() == type_name
}

/// Whether the head of a policy can be true for `scope`.
pub(crate) fn head_matches(head: &Head, scope: &Scope) -> bool {
    let principal_parent = scope.principal_parent.as_ref();
    let principal = match &head.principal {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(uid) => scope.principal == *uid,
        PrincipalConstraint::In(uid) => is_in(&scope.principal, principal_parent, uid),
        PrincipalConstraint::Is(type_name) => type_is(&scope.principal, type_name),
        PrincipalConstraint::IsIn(type_name, uid) => {
            type_is(&scope.principal, type_name) && is_in(&scope.principal, principal_parent, uid)
        }
    };
    if !principal {
        return false;
    }
    // The schema declares no action groups and the evaluation gets no action entities, so an
    // action is `in` only itself (the `schema_has_no_action_groups` test guards this).
    let action = match &head.action {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => scope.action == *uid,
        ActionConstraint::In(uids) => uids.contains(&scope.action),
    };
    if !action {
        return false;
    }
    let resource_parent = scope.resource_parent.as_ref();
    match &head.resource {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(uid) => scope.resource == *uid,
        ResourceConstraint::In(uid) => is_in(&scope.resource, resource_parent, uid),
        ResourceConstraint::Is(type_name) => type_is(&scope.resource, type_name),
        ResourceConstraint::IsIn(type_name, uid) => {
            type_is(&scope.resource, type_name) && is_in(&scope.resource, resource_parent, uid)
        }
    }
}

/// `policy` with an unconstrained head (`principal, action, resource`), the same id, effect and
/// conditions and no annotations, or None if Cedar cannot rebuild it (the caller then keeps the
/// original).
///
/// Cedar evaluates a policy as `principal && action && resource && conditions`; in a slice every
/// head is true for the request, so its evaluation is pure cost (entity lookups and hierarchy
/// walks for `in`). Without it the policy has the same outcome and errors for that request.
/// Annotations do not take part in evaluation (Cedar only copies them into its response), and
/// the engine knows the `@step_up` forbids by id.
pub(crate) fn without_head(policy: &Policy, mut json: serde_json::Value) -> Option<Policy> {
    let fields = json.as_object_mut()?;
    for part in ["principal", "action", "resource"] {
        fields.insert(part.to_owned(), serde_json::json!({ "op": "All" }));
    }
    fields.remove("annotations");
    Policy::from_json(Some(policy.id().clone()), json).ok()
}

/// Builds the slice for `scope` from the active policies and their heads.
pub(crate) fn build_slice(compiled: &Compiled, scope: Scope) -> Result<Slice, PolicyError> {
    let added = |set: &mut PolicySet, policy: &Policy| {
        set.add(policy.clone()).map_err(|e| PolicyError::Request(format!("slice: {e}")))
    };
    let candidates = compiled.policies.iter().zip(&compiled.heads).zip(&compiled.headless).zip(&compiled.context_uses);
    let mut set = PolicySet::new();
    let mut matching = Vec::new();
    let mut context_use = ContextUse::NONE;
    let mut has_step_up = false;
    for (((policy, head), headless), used) in candidates {
        if head_matches(head, &scope) {
            context_use = context_use.union(*used);
            has_step_up |= compiled.step_up.contains(policy.id());
            added(&mut set, headless)?;
            matching.push((headless, *used));
        }
    }
    let approval = if has_step_up {
        let mut check = ApprovalCheck {
            reading_approved: PolicySet::new(),
            context_use: ContextUse::NONE,
            other_permits: PolicySet::new(),
        };
        for (policy, used) in matching {
            if used.reads_approved() {
                check.context_use = check.context_use.union(used);
                added(&mut check.reading_approved, policy)?;
            } else if policy.effect() == Effect::Permit {
                added(&mut check.other_permits, policy)?;
            }
            // A forbid that does not read `approved` is left out: it decides the same with an
            // approval, and the re-check runs only when none of them applied.
        }
        Some(check)
    } else {
        None
    };
    Ok(Slice {
        policies: set,
        approval,
        entities: scope.entities()?,
        principal: scope.principal,
        action: scope.action,
        resource: scope.resource,
        context_use,
    })
}

/// Two-generation cache of slices by scope key.
#[derive(Default)]
pub(crate) struct SliceCache {
    generations: RwLock<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, Arc<Slice>>,
    previous: HashMap<String, Arc<Slice>>,
}

impl SliceCache {
    /// The cached slice for `key`, or the one `build` makes (then cached).
    pub(crate) fn get_or_build(
        &self,
        key: String,
        build: impl FnOnce() -> Result<Slice, PolicyError>,
    ) -> Result<Arc<Slice>, PolicyError> {
        if let Some(slice) = self.generations.read().current.get(&key) {
            return Ok(Arc::clone(slice));
        }
        let promoted = self.generations.write().previous.remove(&key);
        let slice = match promoted {
            Some(slice) => slice,
            None => Arc::new(build()?),
        };
        let mut generations = self.generations.write();
        if generations.current.len() >= SLICE_CACHE_GENERATION {
            generations.previous = std::mem::take(&mut generations.current);
        }
        generations.current.insert(key, Arc::clone(&slice));
        Ok(slice)
    }

    /// Number of cached scopes (both generations).
    pub(crate) fn len(&self) -> usize {
        let generations = self.generations.read();
        generations.current.len() + generations.previous.len()
    }
}
