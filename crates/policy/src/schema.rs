//! The published Cedar schema and the names derived from it once per process: entity type
//! names, action uids and the validator that every policy set is checked with.

use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema, Validator};

/// The published schema text (`crates/policy/schema/mandate.cedarschema`), documented in
/// `docs/policy.md`. Policies are validated against it in strict mode on every load.
pub const SCHEMA: &str = include_str!("../schema/mandate.cedarschema");

/// Entity type and action names of [`SCHEMA`], parsed once.
pub(crate) struct Names {
    pub(crate) owner: EntityTypeName,
    pub(crate) agent: EntityTypeName,
    pub(crate) client: EntityTypeName,
    pub(crate) resource: EntityTypeName,
    pub(crate) tool: EntityTypeName,
    pub(crate) issue: EntityUid,
    pub(crate) exchange: EntityUid,
    pub(crate) call: EntityUid,
}

fn type_name(name: &str) -> EntityTypeName {
    // The names are constants of this crate, checked by the schema tests; a failure here is a
    // programming error, not bad input.
    #[allow(clippy::expect_used)]
    EntityTypeName::from_str(name).expect("constant entity type name parses")
}

fn action(name: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name("Mandate::Action"), EntityId::new(name))
}

pub(crate) fn names() -> &'static Names {
    static NAMES: OnceLock<Names> = OnceLock::new();
    NAMES.get_or_init(|| Names {
        owner: type_name("Mandate::Owner"),
        agent: type_name("Mandate::Agent"),
        client: type_name("Mandate::Client"),
        resource: type_name("Mandate::Resource"),
        tool: type_name("Mandate::Tool"),
        issue: action("issue"),
        exchange: action("exchange"),
        call: action("call"),
    })
}

/// The validator over the parsed [`SCHEMA`].
pub(crate) fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        // SCHEMA is a constant of this crate; `schema_parses` in the tests keeps it valid.
        #[allow(clippy::expect_used)]
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA).expect("the built-in schema parses");
        Validator::new(schema)
    })
}

#[cfg(test)]
pub(crate) fn schema() -> &'static Schema {
    validator().schema()
}
