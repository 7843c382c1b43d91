//! Cedar policies for Mandate: the published schema ([`SCHEMA`]), policy sets loaded from text,
//! files or the admin API and strictly validated on load (an invalid set never replaces the
//! active one), and decisions for token issuance/exchange and gateway calls that report the ids
//! of the deciding policies. Decisions evaluate only the policies whose heads can match the
//! request (see [`slice`]), with the same result as the whole set. See docs/policy.md.

mod engine;
mod error;
pub mod load;
pub mod request;
mod schema;
pub mod slice;

pub use engine::{Decision, PolicyEngine, PolicySummary, read_policy_text, validate, validate_file};
pub use error::PolicyError;
pub use request::{Action, Counters, PolicyRequest};
pub use schema::SCHEMA;

#[cfg(test)]
mod tests;
