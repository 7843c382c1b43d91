//! Test fixtures shared by the grant modules' unit tests: an `Authz` over a fresh SQLite store
//! in a temporary directory, with a generated KEK.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mandate_audit::CheckpointPolicy;
use mandate_core::Clock;
use mandate_crypto::Kek;

use crate::{Authz, AuthzConfig};

/// A started `Authz`; keep the directory alive as long as the store is used.
pub(crate) async fn started(config: AuthzConfig, clock: Arc<dyn Clock>) -> (Authz, tempfile::TempDir) {
    mandate_crypto::init().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = mandate_store::open(dir.path().join("m.db").to_str().unwrap()).await.unwrap();
    let policy = CheckpointPolicy::default();
    let authz = Authz::start(store, Kek::generate().unwrap().0, clock, config, policy, "t/audit").await.unwrap();
    (authz, dir)
}
