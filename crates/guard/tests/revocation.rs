//! Store-backed revocation as the guard reads it, against a real SQLite store: per-token
//! revocation and the agent/owner/client/grant "not before" epochs.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mandate_audit::AuditEncoder;
use mandate_core::{AuditEvent, ManualClock, ScopeSet};
use mandate_crypto::jose::sign_jwt;
use mandate_crypto::{Alg, SigningKey};
use mandate_guard::*;
use mandate_store::{EpochKind, Mutation, Store, WriteJob};
use serde_json::{Value, json};

const ISSUER: &str = "https://as.example";
const RESOURCE: &str = "https://api.example/mcp";
const NOW: i64 = 1_800_000_000;

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    guard: Guard,
    key: SigningKey,
}

async fn setup() -> Setup {
    setup_with(|guard| guard).await
}

/// A setup whose guard `configure` finishes.
async fn setup_with(configure: impl FnOnce(Guard) -> Guard) -> Setup {
    mandate_crypto::init().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = mandate_store::open(dir.path().join("mandate.db").to_str().unwrap()).await.unwrap();
    let key = SigningKey::generate(Alg::EdDSA).unwrap();
    let guard = configure(
        Guard::new(
            GuardConfig::new(RESOURCE, vec![ISSUER.into()]).unwrap(),
            Arc::new(StaticKeys::new(ISSUER, vec![key.public().clone()])),
            Arc::new(ManualClock::at_ms(NOW * 1000)),
        )
        .with_revocation(Arc::new(StoreRevocation::new(Arc::clone(&store), "td.example"))),
    );
    Setup { _dir: dir, store, guard, key }
}

async fn apply(store: &Arc<dyn Store>, mutation: Mutation) {
    let job = WriteJob { mutation: Some(mutation), event: AuditEvent::allow("test.revoke", "corr"), ts_ms: NOW * 1000 };
    let outcomes = store.commit(vec![job], Arc::new(AuditEncoder)).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].result, Ok(()));
}

async fn epoch(store: &Arc<dyn Store>, kind: EpochKind, name: &str, not_before_secs: i64) {
    apply(store, Mutation::RevokeBefore { kind, name: name.into(), not_before_secs }).await;
}

fn token(s: &Setup, edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = json!({"iss": ISSUER, "sub": "spiffe://td.example/agent/bot", "aud": RESOURCE, "client_id": "c1",
                            "scope": "read", "iat": NOW - 10, "exp": NOW + 300, "jti": "j1", "mandate_owner": "alice",
                            "mandate_grant": "family-1"});
    edit(&mut claims);
    sign_jwt(&s.key, "at+jwt", &claims).unwrap()
}

/// `Ok(())` or the refusal's description.
async fn check(s: &Setup, token: &str) -> Result<(), String> {
    let authorization = format!("Bearer {token}");
    let request = Presented::bearer(Some(&authorization), "GET", "/mcp");
    s.guard.check(&request, &ScopeSet::default()).await.map(|_| ()).map_err(|r| {
        assert_eq!(r.kind, RejectionKind::InvalidToken);
        r.description
    })
}

#[tokio::test]
async fn a_grant_epoch_revokes_the_tokens_of_that_grant_only() {
    let s = setup().await;
    let issued_before = token(&s, |_| {});
    let other_grant = token(&s, |c| c["mandate_grant"] = json!("family-2"));
    let no_grant = token(&s, |c| {
        c.as_object_mut().unwrap().remove("mandate_grant");
    });
    let issued_after = token(&s, |c| c["iat"] = json!(NOW - 4));
    let same_second = token(&s, |c| c["iat"] = json!(NOW - 5));
    for t in [&issued_before, &other_grant, &no_grant, &issued_after] {
        assert_eq!(check(&s, t).await, Ok(()));
    }
    epoch(&s.store, EpochKind::Grant, "family-1", NOW - 5).await;
    let refused = check(&s, &issued_before).await.unwrap_err();
    assert!(refused.contains("revoked"), "{refused}");
    assert!(check(&s, &same_second).await.is_err(), "epochs are inclusive");
    assert_eq!(check(&s, &other_grant).await, Ok(()));
    assert_eq!(check(&s, &no_grant).await, Ok(()));
    assert_eq!(check(&s, &issued_after).await, Ok(()));
}

#[tokio::test]
async fn agent_owner_and_client_epochs_apply() {
    for (kind, name) in [(EpochKind::Agent, "bot"), (EpochKind::Owner, "alice"), (EpochKind::Client, "c1")] {
        let s = setup().await;
        let theirs = token(&s, |_| {});
        let unrelated = token(&s, |c| {
            c["sub"] = json!("spiffe://td.example/agent/other");
            c["mandate_owner"] = json!("carol");
            c["client_id"] = json!("c2");
            c["mandate_grant"] = json!("family-2");
        });
        epoch(&s.store, kind, name, NOW - 5).await;
        assert!(check(&s, &theirs).await.is_err(), "{kind:?}");
        assert_eq!(check(&s, &unrelated).await, Ok(()), "{kind:?}");
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused() {
    let s = setup().await;
    let t = token(&s, |c| c["jti"] = json!("j-revoked"));
    assert_eq!(check(&s, &t).await, Ok(()));
    apply(&s.store, Mutation::RevokeToken { jti: "j-revoked".into(), expires_at_secs: NOW + 300 }).await;
    assert_eq!(check(&s, &t).await, Err("token was revoked".into()));
}

#[tokio::test]
async fn a_revoked_token_is_refused_while_its_verification_is_cached() {
    let s = setup_with(|guard| guard.with_verified_cache(DEFAULT_VERIFIED_CAPACITY)).await;
    let t = token(&s, |c| c["jti"] = json!("j-cached"));
    let held = token(&s, |c| c["jti"] = json!("j-cached-2"));
    for presented in [&t, &held, &t, &held] {
        assert_eq!(check(&s, presented).await, Ok(()));
    }
    apply(&s.store, Mutation::RevokeToken { jti: "j-cached".into(), expires_at_secs: NOW + 300 }).await;
    assert_eq!(check(&s, &t).await, Err("token was revoked".into()));
    epoch(&s.store, EpochKind::Agent, "bot", NOW - 5).await;
    assert!(check(&s, &held).await.unwrap_err().contains("revoked"));
}

#[tokio::test]
async fn revoking_an_agent_ends_tokens_it_holds_for_someone_else() {
    let s = setup().await;
    let delegated = |actor: &'static str| {
        token(&s, move |c| {
            c["sub"] = json!("carol");
            c["mandate_owner"] = json!("carol");
            c["client_id"] = json!("c2");
            c["act"] = json!({"sub": "spiffe://td.example/agent/front", "act": {"sub": actor}});
        })
    };
    let via_bot = delegated("spiffe://td.example/agent/bot");
    let via_other = delegated("spiffe://td.example/agent/other");
    assert_eq!(check(&s, &via_bot).await, Ok(()));
    epoch(&s.store, EpochKind::Agent, "bot", NOW - 5).await;
    assert!(check(&s, &via_bot).await.is_err(), "an earlier actor in the chain was revoked");
    assert_eq!(check(&s, &via_other).await, Ok(()));
    epoch(&s.store, EpochKind::Agent, "front", NOW - 5).await;
    assert!(check(&s, &via_other).await.is_err(), "the current actor was revoked");
}
