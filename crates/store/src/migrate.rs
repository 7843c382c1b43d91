//! Ordered, embedded schema migrations for both dialects. Each runs once, in its own
//! transaction, recorded in `schema_migrations`. (A dedicated migration crate would add more
//! dependencies than this file has lines.)

pub(crate) struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

pub(crate) const SQLITE: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../migrations/sqlite/V1__init.sql") },
    Migration { version: 2, sql: include_str!("../migrations/sqlite/V2__workload.sql") },
    Migration { version: 3, sql: include_str!("../migrations/sqlite/V3__delegation.sql") },
    Migration { version: 4, sql: include_str!("../migrations/sqlite/V4__audit_tiles.sql") },
    Migration { version: 5, sql: include_str!("../migrations/sqlite/V5__ssf.sql") },
    Migration { version: 6, sql: include_str!("../migrations/sqlite/V6__ciba.sql") },
    Migration { version: 7, sql: include_str!("../migrations/sqlite/V7__ciba_ping.sql") },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration { version: 1, sql: include_str!("../migrations/postgres/V1__init.sql") },
    Migration { version: 2, sql: include_str!("../migrations/postgres/V2__workload.sql") },
    Migration { version: 3, sql: include_str!("../migrations/postgres/V3__delegation.sql") },
    Migration { version: 4, sql: include_str!("../migrations/postgres/V4__audit_tiles.sql") },
    Migration { version: 5, sql: include_str!("../migrations/postgres/V5__ssf.sql") },
    Migration { version: 6, sql: include_str!("../migrations/postgres/V6__ciba.sql") },
    Migration { version: 7, sql: include_str!("../migrations/postgres/V7__ciba_ping.sql") },
];

pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
    (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)";

pub(crate) const CURRENT_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations";
pub(crate) const RECORD_VERSION: &str = "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, 0)";
