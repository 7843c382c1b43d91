//! The store contract, run against every backend: SQLite always, PostgreSQL at
//! `MANDATE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`), each test in a
//! fresh schema.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mandate_core::{
    Agent, AuditEvent, AuthCode, Client, ClientAuthMethod, Consent, DelegationTarget, Name, Owner, RefreshToken,
    Resource, ResourceUri, TrustDomain, TrustedIdp,
};
use mandate_store::*;

/// A stand-in encoder: the store only needs a deterministic hash that depends on the position.
struct TestEncoder;

impl EntryEncoder for TestEncoder {
    fn encode(&self, position: &EntryPosition, event: &AuditEvent) -> EncodedEntry {
        let canonical = format!(
            "{}|{}|{}|{}|{}",
            position.seq,
            hex::encode(position.prev),
            event.action,
            event.decision.as_str(),
            event.reason.clone().unwrap_or_default()
        );
        let mut leaf_hash = [0u8; 32];
        for (i, b) in canonical.bytes().enumerate() {
            leaf_hash[i % 32] = leaf_hash[i % 32].wrapping_mul(31).wrapping_add(b);
        }
        EncodedEntry { canonical, leaf_hash }
    }
}

fn job(mutation: Option<Mutation>, action: &str) -> WriteJob {
    WriteJob { mutation, event: AuditEvent::allow(action, "corr"), ts_ms: 1 }
}

fn owner(name: &str) -> Owner {
    Owner {
        name: Name::parse(name).unwrap(),
        display_name: Some("Alice A.".into()),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        created_at_ms: 10,
    }
}

fn agent(name: &str, owner: &str) -> Agent {
    let n = Name::parse(name).unwrap();
    Agent {
        spiffe_id: TrustDomain::parse("example.org").unwrap().agent_id(&n),
        name: n,
        owner: Name::parse(owner).unwrap(),
        scopes: vec!["read".into(), "write".into()],
        selectors: vec!["unix:uid:1000".into(), "unix:path:/usr/bin/my agent".into()],
        may_impersonate: true,
        created_at_ms: 11,
    }
}

fn client(id: &str, agent: &str) -> Client {
    Client {
        client_id: id.into(),
        agent: Some(Name::parse(agent).unwrap()),
        auth_method: ClientAuthMethod::ClientSecretBasic,
        secret_hash: Some("ab".repeat(32)),
        jwks: None,
        can_introspect: true,
        redirect_uris: vec!["https://app.example/cb".into()],
        grant_types: vec!["client_credentials".into(), "authorization_code".into()],
        client_name: Some("App".into()),
        metadata: Some(r#"{"client_uri":"https://app.example"}"#.into()),
        created_at_ms: 12,
    }
}

async fn commit(store: &Arc<dyn Store>, jobs: Vec<WriteJob>) -> Vec<JobOutcome> {
    store.commit(jobs, Arc::new(TestEncoder)).await.unwrap()
}

pub async fn registry_round_trip(store: Arc<dyn Store>) {
    let resource = Resource {
        uri: ResourceUri::parse("https://api.example.com").unwrap(),
        scopes: vec!["read".into()],
        created_at_ms: 13,
    };
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::CreateOwner(owner("alice"))), "registry.owner.create"),
            job(Some(Mutation::CreateAgent(agent("bot", "alice"))), "registry.agent.create"),
            job(Some(Mutation::CreateClient(client("c1", "bot"))), "registry.client.create"),
            job(Some(Mutation::CreateResource(resource.clone())), "registry.resource.create"),
        ],
    )
    .await;
    assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
    assert_eq!(out.iter().map(|o| o.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);

    assert_eq!(store.owner("alice").await.unwrap(), Some(owner("alice")));
    assert_eq!(store.agent("bot").await.unwrap(), Some(agent("bot", "alice")));
    assert_eq!(store.client("c1").await.unwrap(), Some(client("c1", "bot")));
    assert_eq!(store.resource("https://api.example.com").await.unwrap(), Some(resource));
    assert_eq!(store.owners().await.unwrap().len(), 1);
    assert_eq!(store.agents().await.unwrap().len(), 1);
    assert_eq!(store.clients().await.unwrap().len(), 1);
    assert_eq!(store.resources().await.unwrap().len(), 1);
    assert_eq!(store.agent("nobody").await.unwrap(), None);
}

pub async fn refused_mutations_change_nothing_but_are_logged(store: Arc<dyn Store>) {
    commit(&store, vec![job(Some(Mutation::CreateOwner(owner("alice"))), "a")]).await;
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::CreateOwner(owner("alice"))), "dup"),
            job(Some(Mutation::CreateAgent(agent("bot", "ghost"))), "missing-owner"),
            job(Some(Mutation::CreateAgent(agent("bot", "alice"))), "ok"),
            job(Some(Mutation::DeleteOwner("alice".into())), "in-use"),
            job(Some(Mutation::DeleteAgent("nobody".into())), "not-found"),
        ],
    )
    .await;
    assert!(matches!(out[0].result, Err(MutationError::Conflict(_))), "{:?}", out[0]);
    assert!(matches!(out[1].result, Err(MutationError::NotFound(_))), "{:?}", out[1]);
    assert!(out[2].result.is_ok());
    assert!(matches!(out[3].result, Err(MutationError::InUse(_))), "{:?}", out[3]);
    assert!(matches!(out[4].result, Err(MutationError::NotFound(_))), "{:?}", out[4]);
    // The owner still has exactly one agent; nothing half-applied.
    assert_eq!(store.agents().await.unwrap().len(), 1);
    assert!(store.owner("alice").await.unwrap().is_some());
    // Every job, refused or not, has its event, and refusals say so.
    assert_eq!(store.audit_len().await.unwrap(), 6);
    let entries = store.audit_entries(1, 6).await.unwrap();
    assert!(entries[0].canonical.ends_with("|dup|deny|conflict"), "{}", entries[0].canonical);
    assert!(entries[1].canonical.ends_with("|missing-owner|deny|not_found"));
    assert!(entries[2].canonical.ends_with("|ok|allow|"));
    assert!(entries[3].canonical.ends_with("|in-use|deny|in_use"));
}

pub async fn audit_chain_links_across_commits(store: Arc<dyn Store>) {
    commit(&store, vec![job(None, "a"), job(None, "b")]).await;
    commit(&store, vec![job(None, "c")]).await;
    let entries = store.audit_entries(0, 10).await.unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries[0].canonical.starts_with(&format!("0|{}|", "0".repeat(64))));
    for pair in entries.windows(2) {
        let expected_prefix = format!("{}|{}|", pair[1].seq, hex::encode(pair[0].leaf_hash));
        assert!(pair[1].canonical.starts_with(&expected_prefix), "{}", pair[1].canonical);
    }
    assert_eq!(store.audit_entries(1, 2).await.unwrap().len(), 1);
}

pub async fn concurrent_commits_keep_one_chain(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for j in 0..5 {
                commit(&store, vec![job(None, &format!("t{i}-{j}")), job(None, "x")]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let entries = store.audit_entries(0, 1000).await.unwrap();
    assert_eq!(entries.len(), 80);
    for (i, pair) in entries.windows(2).enumerate() {
        assert_eq!(pair[1].seq, i as u64 + 1);
        assert!(pair[1].canonical.contains(&hex::encode(pair[0].leaf_hash)));
    }
}

pub async fn revocation_epochs_only_rise(store: Arc<dyn Store>) {
    let epoch = |kind, name: &str, secs| {
        job(Some(Mutation::RevokeBefore { kind, name: name.into(), not_before_secs: secs }), "revoke")
    };
    assert_eq!(store.revoked_before(&[(EpochKind::Agent, "bot")]).await.unwrap(), None);
    commit(&store, vec![epoch(EpochKind::Agent, "bot", 100), epoch(EpochKind::Agent, "bot", 50)]).await;
    commit(&store, vec![epoch(EpochKind::Owner, "alice", 70)]).await;
    let both = [(EpochKind::Agent, "bot"), (EpochKind::Owner, "alice"), (EpochKind::Client, "c")];
    assert_eq!(store.revoked_before(&both).await.unwrap(), Some(100));
    assert_eq!(store.revoked_before(&[(EpochKind::Owner, "alice")]).await.unwrap(), Some(70));
    assert_eq!(store.revoked_before(&[(EpochKind::Owner, "bot")]).await.unwrap(), None);
}

/// The combined read agrees with the two separate ones, for each part alone and together.
pub async fn token_revocation_reads_both_parts(store: Arc<dyn Store>) {
    let subjects = [(EpochKind::Client, "c"), (EpochKind::Agent, "bot"), (EpochKind::Owner, "alice")];
    let nothing = TokenRevocation { token_revoked: false, not_before: None };
    assert_eq!(store.token_revocation("j1", &subjects).await.unwrap(), nothing);
    assert_eq!(store.token_revocation("j1", &[]).await.unwrap(), nothing);
    commit(&store, vec![job(Some(Mutation::RevokeToken { jti: "j1".into(), expires_at_secs: 100 }), "revoke")]).await;
    let revoked = store.token_revocation("j1", &subjects).await.unwrap();
    assert_eq!(revoked, TokenRevocation { token_revoked: true, not_before: None });
    let epoch = |kind, name: &str, secs| {
        job(Some(Mutation::RevokeBefore { kind, name: name.into(), not_before_secs: secs }), "revoke")
    };
    commit(&store, vec![epoch(EpochKind::Agent, "bot", 40), epoch(EpochKind::Owner, "alice", 60)]).await;
    let other = store.token_revocation("j2", &subjects).await.unwrap();
    assert_eq!(other, TokenRevocation { token_revoked: false, not_before: Some(60) });
    assert_eq!(other.not_before, store.revoked_before(&subjects).await.unwrap());
    let both = store.token_revocation("j1", &subjects[..2]).await.unwrap();
    assert_eq!(both, TokenRevocation { token_revoked: true, not_before: Some(40) });
    let unrelated = store.token_revocation("j3", &[(EpochKind::Agent, "alice")]).await.unwrap();
    assert_eq!(unrelated, nothing, "an epoch is for its kind and name only");
}

pub async fn token_revocation_and_one_time_ids(store: Arc<dyn Store>) {
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::RevokeToken { jti: "j1".into(), expires_at_secs: 100 }), "revoke"),
            job(Some(Mutation::RevokeToken { jti: "j1".into(), expires_at_secs: 100 }), "revoke-again"),
            job(Some(Mutation::ConsumeOnce { id: "c1:a".into(), expires_at_secs: 100 }), "use"),
            job(Some(Mutation::ConsumeOnce { id: "c1:a".into(), expires_at_secs: 100 }), "replay"),
            job(Some(Mutation::ConsumeOnce { id: "c1:old".into(), expires_at_secs: 10 }), "old"),
        ],
    )
    .await;
    assert!(out[1].result.is_ok(), "revoking twice is idempotent");
    assert!(out[2].result.is_ok());
    assert!(matches!(out[3].result, Err(MutationError::Conflict(_))));
    assert!(store.is_token_revoked("j1").await.unwrap());
    assert!(!store.is_token_revoked("j2").await.unwrap());
    assert_eq!(store.purge_expired(50).await.unwrap(), 1);
    // After its expiry is purged, the old id is free again; the live one is still taken.
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::ConsumeOnce { id: "c1:old".into(), expires_at_secs: 200 }), "old"),
            job(Some(Mutation::ConsumeOnce { id: "c1:a".into(), expires_at_secs: 200 }), "a"),
        ],
    )
    .await;
    assert!(out[0].result.is_ok());
    assert!(out[1].result.is_err());
}

pub async fn keys_settings_and_checkpoints(store: Arc<dyn Store>) {
    let key = StoredKey {
        kid: "k1".into(),
        purpose: "token".into(),
        alg: "EdDSA".into(),
        sealed_private_key: vec![1, 2, 3],
        created_at_ms: 1,
        activate_at_ms: 2,
        retire_at_ms: None,
    };
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::InsertKey(key.clone())), "key"),
            job(Some(Mutation::RetireKey { kid: "k1".into(), retire_at_ms: 99 }), "retire"),
            job(Some(Mutation::RetireKey { kid: "nope".into(), retire_at_ms: 99 }), "retire-missing"),
            job(Some(Mutation::PutSetting { key: "s".into(), value: "1".into() }), "set"),
            job(Some(Mutation::PutSetting { key: "s".into(), value: "2".into() }), "set"),
        ],
    )
    .await;
    assert!(out[2].result.is_err());
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys, vec![StoredKey { retire_at_ms: Some(99), ..key }]);
    assert_eq!(store.setting("s").await.unwrap().as_deref(), Some("2"));
    assert_eq!(store.setting("missing").await.unwrap(), None);

    assert_eq!(store.latest_checkpoint().await.unwrap(), None);
    let cp = |size, byte| StoredCheckpoint {
        tree_size: size,
        root: [byte; 32],
        note: format!("note {size}"),
        frontier: vec![[byte; 32], [7; 32]],
        created_at_ms: 5,
    };
    store.insert_checkpoint(&cp(3, 1)).await.unwrap();
    store.insert_checkpoint(&cp(5, 2)).await.unwrap();
    store.insert_checkpoint(&cp(5, 9)).await.unwrap();
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some(cp(5, 2)));
    assert_eq!(store.checkpoints().await.unwrap(), vec![cp(3, 1), cp(5, 2)]);
}

/// What a test leaves behind, removed once the test has run, whether or not it passed.
trait Cleanup {
    async fn cleanup(self);
}

pub async fn workload_identity_records(store: Arc<dyn Store>) {
    use std::collections::BTreeMap;

    use mandate_core::{FederationRule, JoinToken, SubjectMatch};

    commit(
        &store,
        vec![
            job(Some(Mutation::CreateOwner(owner("alice"))), "o"),
            job(Some(Mutation::CreateAgent(agent("bot", "alice"))), "a"),
        ],
    )
    .await;
    let selectors = vec!["unix:uid:0".to_owned()];
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::SetSelectors { agent: "bot".into(), selectors: selectors.clone() }), "sel"),
            job(Some(Mutation::SetSelectors { agent: "ghost".into(), selectors: vec![] }), "sel-missing"),
        ],
    )
    .await;
    assert!(out[0].result.is_ok());
    assert!(matches!(out[1].result, Err(MutationError::NotFound(_))));
    assert_eq!(store.agent("bot").await.unwrap().unwrap().selectors, selectors);

    let token = JoinToken {
        token_hash: "h1".into(),
        agent: Name::parse("bot").unwrap(),
        expires_at_ms: 1_000,
        used_at_ms: None,
        created_at_ms: 1,
    };
    let expired = JoinToken { token_hash: "h2".into(), expires_at_ms: 10, ..token.clone() };
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::CreateJoinToken(token.clone())), "join"),
            job(Some(Mutation::CreateJoinToken(expired)), "join-expired"),
            job(Some(Mutation::UseJoinToken { token_hash: "h1".into(), now_ms: 500 }), "use"),
            job(Some(Mutation::UseJoinToken { token_hash: "h1".into(), now_ms: 501 }), "reuse"),
            job(Some(Mutation::UseJoinToken { token_hash: "h2".into(), now_ms: 500 }), "use-expired"),
            job(Some(Mutation::UseJoinToken { token_hash: "nope".into(), now_ms: 500 }), "use-unknown"),
        ],
    )
    .await;
    assert!(out[2].result.is_ok());
    for refused in &out[3..] {
        assert!(matches!(refused.result, Err(MutationError::NotFound(_))), "{refused:?}");
    }
    assert_eq!(store.join_token("h1").await.unwrap().unwrap().used_at_ms, Some(500));
    assert_eq!(store.join_token("nope").await.unwrap(), None);

    let rule = FederationRule {
        name: Name::parse("k8s").unwrap(),
        issuer: "https://k8s.example".into(),
        jwks_url: Some("https://k8s.example/jwks".into()),
        jwks: None,
        audience: "mandate".into(),
        subject: "system:serviceaccount:prod:".into(),
        subject_match: SubjectMatch::Prefix,
        claims: BTreeMap::from([("kubernetes.io/namespace".to_owned(), "prod".to_owned())]),
        agent: Name::parse("bot").unwrap(),
        max_ttl_secs: 600,
        created_at_ms: 3,
    };
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::CreateFederationRule(rule.clone())), "rule"),
            job(Some(Mutation::CreateFederationRule(rule.clone())), "rule-dup"),
            job(Some(Mutation::DeleteAgent("bot".into())), "delete-referenced-agent"),
        ],
    )
    .await;
    assert!(out[0].result.is_ok());
    assert!(matches!(out[1].result, Err(MutationError::Conflict(_))));
    assert!(matches!(out[2].result, Err(MutationError::InUse(_))), "{:?}", out[2]);
    assert_eq!(store.federation_rules().await.unwrap(), vec![rule]);
    let out = commit(&store, vec![job(Some(Mutation::DeleteFederationRule("k8s".into())), "rule-delete")]).await;
    assert!(out[0].result.is_ok());
    assert!(store.federation_rules().await.unwrap().is_empty());
}

fn refresh(hash: &str, family: &str) -> RefreshToken {
    RefreshToken {
        token_hash: hash.into(),
        family: family.into(),
        client_id: "c1".into(),
        grant: r#"{"owner":"alice"}"#.into(),
        issued_at_ms: 1_000,
        expires_at_ms: 100_000,
        used_at_ms: None,
    }
}

pub async fn delegation_records(store: Arc<dyn Store>) {
    commit(&store, vec![job(Some(Mutation::CreateOwner(owner("alice"))), "o")]).await;
    commit(&store, vec![job(Some(Mutation::CreateAgent(agent("bot", "alice"))), "a")]).await;

    // Authorization codes redeem once, and not after expiry.
    let code = AuthCode {
        code_hash: "h1".into(),
        client_id: "c1".into(),
        grant: "{}".into(),
        expires_at_ms: 5_000,
        used_at_ms: None,
    };
    commit(&store, vec![job(Some(Mutation::CreateAuthCode(code.clone())), "code")]).await;
    assert_eq!(store.auth_code("h1").await.unwrap(), Some(code));
    let redeem = |now_ms| Some(Mutation::RedeemAuthCode { code_hash: "h1".into(), now_ms });
    let out =
        commit(&store, vec![job(redeem(6_000), "late"), job(redeem(2_000), "ok"), job(redeem(3_000), "again")]).await;
    assert!(matches!(out[0].result, Err(MutationError::NotFound(_))), "{out:?}");
    assert!(out[1].result.is_ok());
    assert!(matches!(out[2].result, Err(MutationError::NotFound(_))));
    assert_eq!(store.auth_code("h1").await.unwrap().unwrap().used_at_ms, Some(2_000));

    // Rotation is one batch: spending the old token and storing the new one happen together,
    // and a refused spend leaves no successor behind.
    commit(&store, vec![job(Some(Mutation::CreateRefreshToken(refresh("r1", "f1"))), "rt")]).await;
    let rotate = |old: &str, new: &str| {
        Some(Mutation::All(vec![
            Mutation::UseRefreshToken { token_hash: old.into(), now_ms: 2_000 },
            Mutation::CreateRefreshToken(refresh(new, "f1")),
        ]))
    };
    let out = commit(&store, vec![job(rotate("r1", "r2"), "rotate"), job(rotate("r1", "r3"), "reuse")]).await;
    assert!(out[0].result.is_ok(), "{out:?}");
    assert!(matches!(out[1].result, Err(MutationError::NotFound(_))));
    assert_eq!(store.refresh_token("r1").await.unwrap().unwrap().used_at_ms, Some(2_000));
    assert_eq!(store.refresh_token("r2").await.unwrap().unwrap().used_at_ms, None);
    assert_eq!(store.refresh_token("r3").await.unwrap(), None, "the refused batch left a token");
    commit(
        &store,
        vec![job(
            Some(Mutation::RevokeBefore { kind: EpochKind::Grant, name: "f1".into(), not_before_secs: 9 }),
            "family",
        )],
    )
    .await;
    assert_eq!(store.revoked_before(&[(EpochKind::Grant, "f1")]).await.unwrap(), Some(9));

    // Consent is replaced by the (wider) scopes of a later approval.
    let mut consent = Consent {
        owner: Name::parse("alice").unwrap(),
        client_id: "c1".into(),
        resource: "https://api.example.com".into(),
        scopes: vec!["read".into()],
        granted_at_ms: 1,
    };
    commit(&store, vec![job(Some(Mutation::PutConsent(consent.clone())), "consent")]).await;
    consent.scopes.push("write".into());
    commit(&store, vec![job(Some(Mutation::PutConsent(consent.clone())), "consent")]).await;
    assert_eq!(store.consent("alice", "c1", "https://api.example.com").await.unwrap(), Some(consent));
    assert_eq!(store.consent("alice", "c2", "https://api.example.com").await.unwrap(), None);

    let hash = Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$b3RoZXI".to_owned());
    let set = Mutation::SetOwnerPassword { owner: "alice".into(), password_hash: hash.clone() };
    let missing = Mutation::SetOwnerPassword { owner: "bob".into(), password_hash: None };
    let out = commit(&store, vec![job(Some(set), "pw"), job(Some(missing), "pw")]).await;
    assert!(out[0].result.is_ok());
    assert!(matches!(out[1].result, Err(MutationError::NotFound(_))));
    assert_eq!(store.owner("alice").await.unwrap().unwrap().password_hash, hash);

    // Trusted IdPs are unique by name and by issuer.
    let idp = |name: &str| TrustedIdp {
        name: Name::parse(name).unwrap(),
        issuer: "https://idp.example".into(),
        jwks_url: Some("https://idp.example/jwks".into()),
        jwks: None,
        created_at_ms: 3,
    };
    let out = commit(
        &store,
        vec![
            job(Some(Mutation::CreateTrustedIdp(idp("acme"))), "idp"),
            job(Some(Mutation::CreateTrustedIdp(idp("other"))), "idp"),
        ],
    )
    .await;
    assert!(out[0].result.is_ok());
    assert!(matches!(out[1].result, Err(MutationError::Conflict(_))));
    assert_eq!(store.trusted_idp_by_issuer("https://idp.example").await.unwrap(), Some(idp("acme")));
    assert_eq!(store.trusted_idps().await.unwrap().len(), 1);

    let target = DelegationTarget {
        agent: Name::parse("bot").unwrap(),
        audience: "https://as.example".into(),
        resource: "https://api.example".into(),
        scopes: vec!["read".into()],
        remote_client_id: "bot-at-example".into(),
        created_at_ms: 4,
    };
    commit(&store, vec![job(Some(Mutation::CreateDelegationTarget(target.clone())), "target")]).await;
    assert_eq!(store.delegation_targets("bot").await.unwrap(), vec![target]);
    let delete = Mutation::DeleteDelegationTarget {
        agent: "bot".into(),
        audience: "https://as.example".into(),
        resource: "https://api.example".into(),
    };
    let out = commit(&store, vec![job(Some(delete.clone()), "untarget"), job(Some(delete), "untarget")]).await;
    assert!(out[0].result.is_ok());
    assert!(matches!(out[1].result, Err(MutationError::NotFound(_))));
    assert!(store.delegation_targets("bot").await.unwrap().is_empty());
    let out = commit(&store, vec![job(Some(Mutation::DeleteTrustedIdp("acme".into())), "idp-delete")]).await;
    assert!(out[0].result.is_ok());
}

pub async fn audit_tiles_round_trip(store: Arc<dyn Store>) {
    let out = commit(&store, (0..3).map(|i| job(None, &format!("t{i}"))).collect()).await;
    assert_eq!(out.len(), 3);
    let leaves = store.audit_leaf_hashes(0, 3).await.unwrap();
    let entries = store.audit_entries(0, 3).await.unwrap();
    assert_eq!(leaves, entries.iter().map(|e| e.leaf_hash).collect::<Vec<_>>());
    assert_eq!(store.audit_leaf_hashes(1, 2).await.unwrap(), vec![leaves[1]]);
    assert_eq!(store.audit_tiles_len(8).await.unwrap(), 0);
    store.insert_audit_tiles(8, 0, &[[1; 32], [2; 32]]).await.unwrap();
    // Idempotent: a stored hash is never replaced.
    store.insert_audit_tiles(8, 1, &[[9; 32], [3; 32]]).await.unwrap();
    assert_eq!(store.audit_tiles_len(8).await.unwrap(), 3);
    assert_eq!(store.audit_tiles(8, 1, 10).await.unwrap(), vec![(1, [2; 32]), (2, [3; 32])]);
    assert!(store.audit_tiles(16, 0, 10).await.unwrap().is_empty());
}

pub async fn ssf_streams_and_outbox(store: Arc<dyn Store>) {
    let stream = |id: &str| SsfStream {
        stream_id: id.into(),
        client_id: Some("c1".into()),
        config: "{}".into(),
        status: "enabled".into(),
        created_at_ms: 1,
    };
    let event = |jti: &str, at: i64| SsfEvent {
        stream_id: "s1".into(),
        jti: jti.into(),
        claims: "{}".into(),
        created_at_ms: at,
        attempts: 0,
        next_attempt_ms: at,
    };
    let ssf = |m: SsfMutation| Some(Mutation::Ssf(m));
    let out = commit(
        &store,
        vec![
            job(ssf(SsfMutation::CreateStream(stream("s1"))), "create"),
            job(ssf(SsfMutation::CreateStream(stream("s1"))), "again"),
            job(ssf(SsfMutation::Enqueue(event("b", 2))), "enqueue"),
            job(ssf(SsfMutation::Enqueue(event("a", 3))), "enqueue"),
        ],
    )
    .await;
    assert!(matches!(out[1].result, Err(MutationError::Conflict(_))));
    assert_eq!(store.ssf_streams().await.unwrap(), vec![stream("s1")]);
    let queued = store.ssf_events("s1", 10).await.unwrap();
    assert_eq!(queued.iter().map(|e| e.jti.as_str()).collect::<Vec<_>>(), ["b", "a"], "oldest first");
    assert_eq!(store.ssf_events("s1", 1).await.unwrap().len(), 1);

    let retry = SsfMutation::Retry { stream_id: "s1".into(), jti: "b".into(), attempts: 1, next_attempt_ms: 99 };
    let gone = SsfMutation::Retry { stream_id: "s1".into(), jti: "zz".into(), attempts: 1, next_attempt_ms: 99 };
    let drop = |jti: &str| SsfMutation::Drop { stream_id: "s1".into(), jti: jti.into() };
    let out = commit(
        &store,
        vec![job(ssf(retry), "retry"), job(ssf(gone), "retry"), job(ssf(drop("a")), "ack"), job(ssf(drop("a")), "ack")],
    )
    .await;
    assert!(out[0].result.is_ok());
    assert!(matches!(out[1].result, Err(MutationError::NotFound(_))));
    assert!(out[2].result.is_ok() && out[3].result.is_ok(), "acknowledging twice is no error");
    let queued = store.ssf_events("s1", 10).await.unwrap();
    assert_eq!((queued.len(), queued[0].attempts, queued[0].next_attempt_ms), (1, 1, 99));

    let mut paused = stream("s1");
    paused.status = "paused".into();
    let out = commit(
        &store,
        vec![
            job(ssf(SsfMutation::UpdateStream(paused.clone())), "pause"),
            job(ssf(SsfMutation::UpdateStream(stream("nope"))), "pause"),
        ],
    )
    .await;
    assert!(out[0].result.is_ok() && matches!(out[1].result, Err(MutationError::NotFound(_))));
    assert_eq!(store.ssf_streams().await.unwrap(), vec![paused]);
    let out = commit(&store, vec![job(ssf(SsfMutation::DeleteStream("s1".into())), "delete")]).await;
    assert!(out[0].result.is_ok());
    assert!(store.ssf_streams().await.unwrap().is_empty());
    assert!(store.ssf_events("s1", 10).await.unwrap().is_empty(), "a stream's outbox goes with it");

    let logout = LogoutEvent {
        jti: "l1".into(),
        client_id: "c1".into(),
        endpoint_url: "https://app.example/logout".into(),
        claims: "{}".into(),
        created_at_ms: 5,
        attempts: 0,
        next_attempt_ms: 5,
    };
    let retry = SsfMutation::RetryLogout { jti: "l1".into(), attempts: 2, next_attempt_ms: 50 };
    let out =
        commit(&store, vec![job(ssf(SsfMutation::EnqueueLogout(logout.clone())), "q"), job(ssf(retry), "r")]).await;
    assert!(out.iter().all(|o| o.result.is_ok()));
    let expected = LogoutEvent { attempts: 2, next_attempt_ms: 50, ..logout };
    assert_eq!(store.logout_events(10).await.unwrap(), vec![expected]);
    let gone = SsfMutation::RetryLogout { jti: "zz".into(), attempts: 1, next_attempt_ms: 1 };
    let out = commit(
        &store,
        vec![
            job(ssf(gone), "r"),
            job(ssf(SsfMutation::DropLogout("l1".into())), "d"),
            job(ssf(SsfMutation::DropLogout("l1".into())), "d"),
        ],
    )
    .await;
    assert!(matches!(out[0].result, Err(MutationError::NotFound(_))));
    assert!(out[1].result.is_ok() && out[2].result.is_ok());
    assert!(store.logout_events(10).await.unwrap().is_empty());
}

fn ciba_request(hash: &str, approval: &str, sealed: Option<&str>) -> CibaRequest {
    CibaRequest {
        req_hash: hash.into(),
        approval_id: approval.into(),
        client_id: "c1".into(),
        owner: "alice".into(),
        resource: "https://api.example".into(),
        scope: "write".into(),
        binding_message: "Delete row 7".into(),
        authorization_details: Some(r#"[{"type":"db"}]"#.into()),
        status: "pending".into(),
        expires_at_ms: 1_000,
        last_poll_ms: None,
        decided_at_ms: None,
        created_at_ms: 1,
        notify_endpoint: sealed.map(|_| "https://client.example/cb".into()),
        notify_sealed: sealed.map(str::to_owned),
    }
}

/// CIBA requests: decisions, polls, redemption, and ping callbacks that become due only for
/// requests with sealed callback secrets, and end (erasing them) once delivered or given up.
pub async fn ciba_requests_and_ping_callbacks(store: Arc<dyn Store>) {
    let poll_client = ciba_request("h-poll", "a-poll", None);
    let ping_client = ciba_request("h-ping", "a-ping", Some("c2VhbGVk"));
    let guessed = ciba_request("h-guess", "a-guess", Some("b3RoZXI="));
    let create = |r: &CibaRequest| job(Some(Mutation::CreateCibaRequest(r.clone())), "ciba.request");
    let out = commit(&store, vec![create(&poll_client), create(&ping_client), create(&guessed)]).await;
    assert!(out.iter().all(|o| o.result.is_ok()));
    assert_eq!(store.ciba_request("h-ping").await.unwrap(), Some(ping_client.clone()));
    assert_eq!(store.ciba_request_by_approval("a-poll").await.unwrap(), Some(poll_client.clone()));
    assert_eq!(store.ciba_pending("alice", 10).await.unwrap().len(), 3);
    assert!(store.ciba_notifications_due(i64::MAX, 10).await.unwrap().is_empty(), "nothing decided yet");

    // Pending requests are throttled; a too-early poll is refused.
    let poll = |hash: &str, now_ms| Mutation::PollCibaRequest { req_hash: hash.into(), now_ms, interval_ms: 5 };
    let out = commit(&store, vec![job(Some(poll("h-ping", 10)), "poll"), job(Some(poll("h-ping", 12)), "poll")]).await;
    assert!(out[0].result.is_ok() && out[1].result.is_err(), "slow_down while pending");

    let decide = |approval: &str, status: &str, now_ms| Mutation::DecideCibaRequest {
        approval_id: approval.into(),
        owner: "alice".into(),
        status: status.into(),
        now_ms,
    };
    let wrong_owner = Mutation::DecideCibaRequest {
        approval_id: "a-ping".into(),
        owner: "bob".into(),
        status: "approved".into(),
        now_ms: 20,
    };
    let out = commit(
        &store,
        vec![
            job(Some(wrong_owner), "approve"),
            job(Some(decide("a-poll", "approved", 20)), "approve"),
            job(Some(decide("a-ping", "denied", 21)), "deny"),
            job(Some(decide("a-ping", "approved", 22)), "approve"),
            job(Some(decide("a-late", "approved", 5_000)), "approve"),
        ],
    )
    .await;
    let ok: Vec<bool> = out.iter().map(|o| o.result.is_ok()).collect();
    assert_eq!(ok, [false, true, true, false, false], "another owner's, twice, unknown");
    let decided = store.ciba_request("h-ping").await.unwrap().unwrap();
    assert_eq!((decided.status.as_str(), decided.decided_at_ms), ("denied", Some(21)));
    // Decided requests are no longer throttled (a ping client asks right after its callback).
    let out = commit(&store, vec![job(Some(poll("h-ping", 22)), "poll")]).await;
    assert!(out[0].result.is_ok());

    let due = store.ciba_notifications_due(21, 10).await.unwrap();
    let expected = CibaNotification {
        req_hash: "h-ping".into(),
        client_id: "c1".into(),
        endpoint: "https://client.example/cb".into(),
        sealed: "c2VhbGVk".into(),
        attempts: 0,
        next_attempt_ms: 21,
    };
    assert_eq!(due, vec![expected.clone()], "only the ping client's decided request");
    assert!(store.ciba_notifications_due(20, 10).await.unwrap().is_empty(), "not due before the decision");

    // Wrong passwords: the second (max 2) denies the request and makes its callback due.
    let fail = |now_ms| Mutation::FailCibaDecision { approval_id: "a-guess".into(), max: 2, now_ms };
    let out = commit(&store, vec![job(Some(fail(30)), "f"), job(Some(fail(31)), "f"), job(Some(fail(32)), "f")]).await;
    let ok: Vec<bool> = out.iter().map(|o| o.result.is_ok()).collect();
    assert_eq!(ok, [true, true, false], "a decided request counts no more");
    let guessed = store.ciba_request("h-guess").await.unwrap().unwrap();
    assert_eq!((guessed.status.as_str(), guessed.decided_at_ms), ("denied", Some(31)));
    let due = store.ciba_notifications_due(100, 10).await.unwrap();
    assert_eq!(due.iter().map(|d| d.req_hash.as_str()).collect::<Vec<_>>(), ["h-ping", "h-guess"]);
    assert_eq!(store.ciba_notifications_due(100, 1).await.unwrap().len(), 1, "bounded");

    let retry = Mutation::RetryCibaNotify { req_hash: "h-ping".into(), attempts: 1, next_attempt_ms: 500 };
    let retry_poll = Mutation::RetryCibaNotify { req_hash: "h-poll".into(), attempts: 1, next_attempt_ms: 500 };
    let out = commit(&store, vec![job(Some(retry), "ciba.notify"), job(Some(retry_poll), "ciba.notify")]).await;
    assert!(out[0].result.is_ok() && out[1].result.is_err(), "a poll client has no callback to retry");
    assert_eq!(store.ciba_notifications_due(499, 10).await.unwrap().len(), 1, "only h-guess before the retry");
    let due = store.ciba_notifications_due(500, 10).await.unwrap();
    assert_eq!(due[1], CibaNotification { attempts: 1, next_attempt_ms: 500, ..expected }, "soonest first");

    let end = |hash: &str| Some(Mutation::EndCibaNotify { req_hash: hash.into() });
    let out = commit(&store, vec![job(end("h-ping"), "n"), job(end("h-guess"), "n"), job(end("h-none"), "n")]).await;
    assert!(out[0].result.is_ok() && out[1].result.is_ok() && out[2].result.is_err());
    assert!(store.ciba_notifications_due(i64::MAX, 10).await.unwrap().is_empty());
    let ended = store.ciba_request("h-ping").await.unwrap().unwrap();
    assert_eq!(ended.notify_sealed, None, "the callback secrets are erased once it ended");
    assert_eq!(ended.notify_endpoint.as_deref(), Some("https://client.example/cb"));

    let redeem = |hash: &str| Some(Mutation::RedeemCibaRequest { req_hash: hash.into(), now_ms: 40 });
    let out =
        commit(&store, vec![job(redeem("h-poll"), "r"), job(redeem("h-poll"), "r"), job(redeem("h-ping"), "r")]).await;
    let ok: Vec<bool> = out.iter().map(|o| o.result.is_ok()).collect();
    assert_eq!(ok, [true, false, false], "spent once; a denied request is never redeemed");
}

macro_rules! suite {
    ($backend:ident, $make:path) => {
        mod $backend {
            use super::*;
            suite!(@tests $make; registry_round_trip, refused_mutations_change_nothing_but_are_logged,
                audit_chain_links_across_commits, concurrent_commits_keep_one_chain,
                revocation_epochs_only_rise, token_revocation_reads_both_parts, token_revocation_and_one_time_ids,
                keys_settings_and_checkpoints,
                workload_identity_records, delegation_records, audit_tiles_round_trip,
                ssf_streams_and_outbox, ciba_requests_and_ping_callbacks);
        }
    };
    (@tests $make:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, guard) = $make().await;
                let outcome = tokio::spawn(super::$name(store)).await;
                guard.cleanup().await;
                if let Err(failed) = outcome {
                    std::panic::resume_unwind(failed.into_panic());
                }
            }
        )*
    };
}

async fn sqlite_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("test.db")).unwrap();
    (Arc::new(store), dir)
}

impl Cleanup for tempfile::TempDir {
    async fn cleanup(self) {}
}

suite!(sqlite, sqlite_store);

/// A schema of its own for one test, dropped afterwards.
struct PgSchema {
    url: String,
    name: String,
}

impl Cleanup for PgSchema {
    async fn cleanup(self) {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
        let connection = tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name)).await.unwrap();
        drop(client);
        connection.await.unwrap().unwrap();
    }
}

impl PgSchema {
    /// A schema name no other test or run uses, at `MANDATE_TEST_POSTGRES`.
    fn fresh() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let url = std::env::var("MANDATE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mt_{:x}_{nanos:x}_{n}", std::process::id());
        Self { url, name }
    }
}

/// Fails, rather than skips, when PostgreSQL is unreachable: CI always provides it.
async fn postgres_store() -> (Arc<dyn Store>, PgSchema) {
    let schema = PgSchema::fresh();
    let store = PostgresStore::connect(&schema.url, Some(&schema.name)).await.unwrap();
    (Arc::new(store), schema)
}

suite!(postgres, postgres_store);

/// Replicas starting together on a fresh schema all come up: one creates and migrates it
/// while the others wait on the migration lock, then find it done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_migrate_together() {
    let schema = PgSchema::fresh();
    let replicas: Vec<_> = (0..4)
        .map(|_| {
            let (url, name) = (schema.url.clone(), schema.name.clone());
            tokio::spawn(async move { PostgresStore::connect(&url, Some(&name)).await.map(drop) })
        })
        .collect();
    let mut started = Vec::new();
    for replica in replicas {
        started.push(replica.await.unwrap());
    }
    schema.cleanup().await;
    for result in started {
        result.unwrap();
    }
}
