//! Unit tests of the Transaction Token Service: who may ask, the claims minted, replacement
//! rules and every refusal, against a started `Authz` over a real SQLite store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mandate_core::{ClientAuthMethod, ManualClock, TrustDomain};
use mandate_crypto::Alg;
use mandate_crypto::jose::{peek_claims, peek_typ, sign_jwt};
use zeroize::Zeroizing;

use super::*;
use crate::AuthzConfig;
use crate::client_auth::Presented;
use crate::federation::own_spiffe_issuer;
use crate::keyring::PURPOSE_JWT_SVID;
use crate::registry::{self, NewAgent, NewClient};
use crate::token::token;

const NOW: i64 = 1_800_000_000;
const ISSUER: &str = "https://mandate.example";
const TD: &str = "mandate.local";
const RESOURCE: &str = "https://api.example/";
const AGENT: &str = "spiffe://mandate.local/agent/assistant";

struct Fixture {
    authz: Authz,
    clock: ManualClock,
    client_id: String,
    secret: String,
    _dir: tempfile::TempDir,
}

/// Owner alice, resource RESOURCE (read write admin), agent assistant (read write) with a
/// client_secret_basic client.
async fn fixture() -> Fixture {
    let clock = ManualClock::at_ms(NOW * 1000);
    let config = AuthzConfig { key_publish_lead_secs: 0, ..AuthzConfig::new(ISSUER, TrustDomain::parse(TD).unwrap()) };
    let (authz, dir) = crate::test_support::started(config, Arc::new(clock.clone())).await;
    registry::create_owner(&authz, "alice", None, "t").await.unwrap();
    let scopes = vec!["read".to_owned(), "write".to_owned(), "admin".to_owned()];
    registry::create_resource(&authz, RESOURCE, &scopes, "t").await.unwrap();
    let agent = NewAgent {
        name: "assistant".into(),
        owner: "alice".into(),
        scopes: vec!["read".into(), "write".into()],
        ..Default::default()
    };
    registry::create_agent(&authz, agent, "t").await.unwrap();
    let new_client =
        NewClient { agent: Some("assistant".into()), auth_method: "client_secret_basic".into(), ..Default::default() };
    let made = registry::create_client(&authz, new_client, "t").await.unwrap();
    Fixture { authz, clock, client_id: made.client.client_id, secret: made.secret.unwrap(), _dir: dir }
}

impl Fixture {
    fn client(&self) -> Presented {
        Presented::Secret {
            client_id: self.client_id.clone(),
            secret: Zeroizing::new(self.secret.clone()),
            method: ClientAuthMethod::ClientSecretBasic,
        }
    }

    /// A JWT-SVID of `sub` by this server's SPIFFE issuer, addressed to the server.
    fn jwt_svid(&self, sub: &str, jti: &str) -> Presented {
        let key = self.authz.keys.signer_for(PURPOSE_JWT_SVID, Alg::ES256).unwrap();
        let claims = json!({"iss": own_spiffe_issuer(&self.authz), "sub": sub, "aud": [ISSUER], "iat": NOW,
            "exp": NOW + 300, "jti": jti});
        Presented::Assertion { client_id: None, assertion: sign_jwt(&key, "JWT", &claims).unwrap() }
    }

    /// The agent's own access token for RESOURCE (read write).
    async fn access_token(&self) -> String {
        let request = TokenRequest {
            grant_type: Some("client_credentials".into()),
            presented: self.client(),
            resources: vec![RESOURCE.into()],
            ..TokenRequest::default()
        };
        token(&self.authz, request, "t").await.unwrap().access_token
    }

    fn request(&self, presented: Presented, subject: &str, subject_type: &str) -> TokenRequest {
        TokenRequest {
            grant_type: Some(GRANT_TOKEN_EXCHANGE.into()),
            presented,
            requested_token_type: Some(TOKEN_TYPE_TXN_TOKEN.into()),
            subject_token: Some(subject.into()),
            subject_token_type: Some(subject_type.into()),
            audiences: vec![TD.into()],
            ..TokenRequest::default()
        }
    }

    async fn exchange(&self, request: TokenRequest) -> Result<TokenResponse, OAuthError> {
        token(&self.authz, request, "t").await
    }

    async fn mint(
        &self,
        subject: &str,
        kind: &str,
        scope: Option<&str>,
        details: Option<Value>,
    ) -> Result<MintedTxnToken, OAuthError> {
        let request = MintRequest {
            subject_token: subject,
            subject_token_type: kind,
            scope,
            request_context: None,
            request_details: details,
            workload: "spiffe://mandate.local/gateway",
            verified_claims: None,
        };
        mint(&self.authz, &request, "m").await
    }

    async fn last_event(&self) -> Value {
        let size = self.authz.log.checkpoint().await.unwrap().tree_size;
        let entries = self.authz.store.audit_entries(size - 1, size).await.unwrap();
        serde_json::from_str(&entries[0].canonical).unwrap()
    }
}

fn refused(result: Result<impl std::fmt::Debug, OAuthError>, code: OAuthErrorCode, needle: &str) {
    let error = result.unwrap_err();
    assert_eq!(error.code, code, "{error:?}");
    assert!(error.description.contains(needle), "{needle:?} not in {:?}", error.description);
}

#[tokio::test]
async fn a_jwt_svid_caller_gets_a_txn_token_for_an_agent_token() {
    let f = fixture().await;
    let at = f.access_token().await;
    let mut request = f.request(f.jwt_svid("spiffe://mandate.local/gateway", "s-1"), &at, TOKEN_TYPE_ACCESS_TOKEN);
    request.scope = Some("read".into());
    request.request_context = Some(r#"{"req_ip":"192.0.2.1"}"#.into());
    request.request_details = Some(r#"{"method":"tools/call","tool":"search"}"#.into());
    let issued = f.exchange(request).await.unwrap();
    assert_eq!((issued.token_type, issued.issued_token_type), ("N_A", Some(TOKEN_TYPE_TXN_TOKEN)));
    assert_eq!((issued.expires_in, issued.scope.as_str()), (DEFAULT_TTL_SECS, "read"));
    assert!(issued.refresh_token.is_none());
    assert_eq!(peek_typ(&issued.access_token).unwrap().as_deref(), Some(TXN_TOKEN_TYP));
    let claims = peek_claims(&issued.access_token).unwrap();
    assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some(ISSUER), Some(TD)));
    assert_eq!((claims["sub"].as_str(), claims["act"].clone()), (Some(AGENT), json!({"sub": AGENT})));
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["req_wl"], "spiffe://mandate.local/gateway");
    assert_eq!(claims["rctx"], json!({"req_ip": "192.0.2.1"}));
    assert_eq!(claims["tctx"], json!({"method": "tools/call", "tool": "search"}));
    assert_eq!((claims["iat"].as_i64(), claims["exp"].as_i64()), (Some(NOW), Some(NOW + DEFAULT_TTL_SECS)));
    assert_eq!(claims[OWNER_CLAIM], "alice");
    let txn = uuid::Uuid::parse_str(claims["txn"].as_str().unwrap()).unwrap();
    assert_eq!(txn.get_version_num(), 7);
    assert!(
        !issued.access_token.contains(&at) && !claims.to_string().contains(&at),
        "the inbound token is not embedded"
    );
    let event = f.last_event().await;
    assert_eq!((event["action"].as_str(), event["decision"].as_str()), (Some(ACTION), Some("allow")));
    assert_eq!((event["txn"].as_str(), event["subject"].as_str()), (claims["txn"].as_str(), Some(AGENT)));
    assert_eq!((event["agent"].as_str(), event["owner"].as_str()), (Some(AGENT), Some("alice")));
    assert_eq!(event["detail"], "req_wl=spiffe://mandate.local/gateway");
}

#[tokio::test]
async fn an_agent_client_is_a_workload_too() {
    let f = fixture().await;
    let at = f.access_token().await;
    let issued = f.exchange(f.request(f.client(), &at, TOKEN_TYPE_ACCESS_TOKEN)).await.unwrap();
    let claims = peek_claims(&issued.access_token).unwrap();
    assert_eq!((claims["req_wl"].as_str(), claims["scope"].as_str()), (Some(AGENT), Some("read write")));
    assert_eq!(f.last_event().await["client"].as_str(), Some(f.client_id.as_str()));
}

#[tokio::test]
async fn in_process_mint_is_audited_with_its_txn() {
    let f = fixture().await;
    let at = f.access_token().await;
    let minted = f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, None, Some(json!({"tool": "x"}))).await.unwrap();
    assert_eq!(peek_claims(&minted.token).unwrap()["txn"].as_str(), Some(minted.txn.as_str()));
    let event = f.last_event().await;
    assert_eq!((event["action"].as_str(), event["txn"].as_str()), (Some(ACTION), Some(minted.txn.as_str())));
    assert_eq!(event["scope"], "read write");
}

#[tokio::test]
async fn an_unauthenticated_caller_is_refused() {
    let f = fixture().await;
    let at = f.access_token().await;
    refused(
        f.exchange(f.request(Presented::None, &at, TOKEN_TYPE_ACCESS_TOKEN)).await,
        OAuthErrorCode::InvalidClient,
        "",
    );
    let event = f.last_event().await;
    assert_eq!((event["action"].as_str(), event["decision"].as_str()), (Some(ACTION), Some("deny")));
}

#[tokio::test]
async fn a_replayed_jwt_svid_is_refused() {
    let f = fixture().await;
    let at = f.access_token().await;
    let svid = || f.jwt_svid("spiffe://mandate.local/gateway", "same");
    f.exchange(f.request(svid(), &at, TOKEN_TYPE_ACCESS_TOKEN)).await.unwrap();
    refused(
        f.exchange(f.request(svid(), &at, TOKEN_TYPE_ACCESS_TOKEN)).await,
        OAuthErrorCode::InvalidClient,
        "already used",
    );
}

#[tokio::test]
async fn a_jwt_svid_not_addressed_to_this_server_is_refused() {
    let f = fixture().await;
    let at = f.access_token().await;
    let key = f.authz.keys.signer_for(PURPOSE_JWT_SVID, Alg::ES256).unwrap();
    let claims = json!({"iss": own_spiffe_issuer(&f.authz), "sub": "spiffe://mandate.local/gateway",
        "aud": ["https://elsewhere.example"], "iat": NOW, "exp": NOW + 300});
    let presented = Presented::Assertion { client_id: None, assertion: sign_jwt(&key, "JWT", &claims).unwrap() };
    refused(
        f.exchange(f.request(presented, &at, TOKEN_TYPE_ACCESS_TOKEN)).await,
        OAuthErrorCode::InvalidClient,
        "JWT-SVID",
    );
}

#[tokio::test]
async fn a_jwt_svid_of_a_missing_or_revoked_agent_is_refused() {
    let f = fixture().await;
    let at = f.access_token().await;
    let gone = f.jwt_svid("spiffe://mandate.local/agent/nobody", "g-1");
    refused(
        f.exchange(f.request(gone, &at, TOKEN_TYPE_ACCESS_TOKEN)).await,
        OAuthErrorCode::InvalidClient,
        "no longer exists",
    );
    let svid = f.jwt_svid(AGENT, "r-1");
    crate::revoke::revoke_subject(&f.authz, mandate_store::EpochKind::Agent, "assistant", "t").await.unwrap();
    refused(f.exchange(f.request(svid, &at, TOKEN_TYPE_ACCESS_TOKEN)).await, OAuthErrorCode::InvalidClient, "revoked");
}

#[tokio::test]
async fn a_foreign_audience_is_invalid_target() {
    let f = fixture().await;
    let at = f.access_token().await;
    let mut request = f.request(f.client(), &at, TOKEN_TYPE_ACCESS_TOKEN);
    request.audiences = vec!["other.example".into()];
    refused(f.exchange(request).await, OAuthErrorCode::InvalidTarget, "trust domain");
    let mut request = f.request(f.client(), &at, TOKEN_TYPE_ACCESS_TOKEN);
    request.audiences.clear();
    refused(f.exchange(request).await, OAuthErrorCode::InvalidRequest, "audience is required");
    let mut request = f.request(f.client(), &at, TOKEN_TYPE_ACCESS_TOKEN);
    request.resources = vec![RESOURCE.into()];
    refused(f.exchange(request).await, OAuthErrorCode::InvalidTarget, "not a resource");
}

#[tokio::test]
async fn a_wider_scope_is_refused() {
    let f = fixture().await;
    let at = f.access_token().await;
    refused(
        f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, Some("read admin"), None).await,
        OAuthErrorCode::InvalidScope,
        "admin",
    );
}

#[tokio::test]
async fn an_expired_subject_token_is_refused() {
    let f = fixture().await;
    let at = f.access_token().await;
    f.clock.advance_ms(301_000);
    refused(f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, None, None).await, OAuthErrorCode::InvalidRequest, "not acceptable");
}

#[tokio::test]
async fn the_txn_token_never_outlives_its_subject_token() {
    let f = fixture().await;
    let at = f.access_token().await;
    f.clock.advance_ms(290_000);
    assert_eq!(f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, None, None).await.unwrap().expires_in, 10);
}

#[tokio::test]
async fn a_refresh_token_cannot_be_the_subject() {
    let f = fixture().await;
    let request = f.request(f.client(), "rt-opaque", TOKEN_TYPE_REFRESH_TOKEN);
    refused(f.exchange(request).await, OAuthErrorCode::InvalidRequest, "refresh token");
}

#[tokio::test]
async fn a_subject_token_without_scope_is_refused() {
    let f = fixture().await;
    let key = f.authz.keys.signer(f.authz.config.access_token_alg).unwrap();
    let claims = json!({"iss": ISSUER, "sub": AGENT, "aud": RESOURCE, "client_id": f.client_id, "iat": NOW,
        "exp": NOW + 300, "jti": "no-scope"});
    let at = sign_jwt(&key, "at+jwt", &claims).unwrap();
    refused(
        f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, None, None).await,
        OAuthErrorCode::InvalidScope,
        "cannot be determined",
    );
}

#[tokio::test]
async fn request_details_must_be_a_json_object() {
    let f = fixture().await;
    let at = f.access_token().await;
    let mut request = f.request(f.client(), &at, TOKEN_TYPE_ACCESS_TOKEN);
    request.request_details = Some(r#"["not", "an", "object"]"#.into());
    refused(f.exchange(request).await, OAuthErrorCode::InvalidRequest, "request_details must be a JSON object");
    let mut request = f.request(f.client(), &at, TOKEN_TYPE_ACCESS_TOKEN);
    request.request_context = Some("{not json".into());
    refused(f.exchange(request).await, OAuthErrorCode::InvalidRequest, "request_context is not JSON");
}

#[tokio::test]
async fn a_replacement_narrows_and_keeps_the_transaction() {
    let f = fixture().await;
    let at = f.access_token().await;
    let first = f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, None, Some(json!({"tool": "x"}))).await.unwrap();
    let request = MintRequest {
        subject_token: &first.token,
        subject_token_type: TOKEN_TYPE_TXN_TOKEN,
        scope: Some("read"),
        request_context: None,
        request_details: Some(json!({"tool": "x", "hop": "risk"})),
        workload: "spiffe://mandate.local/risk",
        verified_claims: None,
    };
    let second = mint(&f.authz, &request, "r").await.unwrap();
    assert_eq!(second.txn, first.txn);
    let (old, new) = (peek_claims(&first.token).unwrap(), peek_claims(&second.token).unwrap());
    assert_eq!((&new["sub"], &new["act"], &new["aud"]), (&old["sub"], &old["act"], &old["aud"]));
    assert_eq!((new["scope"].as_str(), new[REPLACEMENTS_CLAIM].as_i64()), (Some("read"), Some(1)));
    assert_eq!(new["tctx"], json!({"tool": "x", "hop": "risk"}));
    assert_eq!(new[WORKLOAD_CHAIN_CLAIM], json!(["spiffe://mandate.local/gateway"]));
    assert_eq!(new["req_wl"], "spiffe://mandate.local/risk");
    // The replacement cannot outlive the token it replaces.
    assert!(new["exp"].as_i64() <= old["exp"].as_i64());
}

#[tokio::test]
async fn a_replacement_may_not_widen_scope_or_change_context() {
    let f = fixture().await;
    let at = f.access_token().await;
    let first = f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, Some("read"), Some(json!({"tool": "x"}))).await.unwrap();
    let wider = f.mint(&first.token, TOKEN_TYPE_TXN_TOKEN, Some("read write"), None).await;
    refused(wider, OAuthErrorCode::InvalidScope, "write");
    assert_eq!(f.last_event().await["txn"].as_str(), Some(first.txn.as_str()), "refusals name the transaction");
    let changed = f.mint(&first.token, TOKEN_TYPE_TXN_TOKEN, None, Some(json!({"tool": "y"}))).await;
    refused(changed, OAuthErrorCode::InvalidRequest, "\"tool\" would change");
}

#[tokio::test]
async fn an_expired_txn_token_is_not_replaced() {
    let f = fixture().await;
    let at = f.access_token().await;
    let first = f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, None, None).await.unwrap();
    f.clock.advance_ms((DEFAULT_TTL_SECS + 1) * 1000);
    refused(f.mint(&first.token, TOKEN_TYPE_TXN_TOKEN, None, None).await, OAuthErrorCode::InvalidRequest, "expired");
}

#[tokio::test]
async fn replacements_are_capped() {
    let f = fixture().await;
    let at = f.access_token().await;
    let mut current = f.mint(&at, TOKEN_TYPE_ACCESS_TOKEN, None, None).await.unwrap().token;
    for _ in 0..MAX_REPLACEMENTS {
        current = f.mint(&current, TOKEN_TYPE_TXN_TOKEN, None, None).await.unwrap().token;
    }
    refused(f.mint(&current, TOKEN_TYPE_TXN_TOKEN, None, None).await, OAuthErrorCode::InvalidRequest, "replaced");
}

#[tokio::test]
async fn an_access_token_is_not_accepted_as_a_txn_token() {
    let f = fixture().await;
    let at = f.access_token().await;
    refused(f.mint(&at, TOKEN_TYPE_TXN_TOKEN, None, None).await, OAuthErrorCode::InvalidRequest, "not acceptable");
}

/// A request minting from claims a co-located guard already verified.
fn pre_verified<'a>(claims: &'a Value, scope: Option<&'a str>) -> MintRequest<'a> {
    MintRequest {
        // Not read: the claims stand for the verified token.
        subject_token: "not-verified-again",
        subject_token_type: TOKEN_TYPE_ACCESS_TOKEN,
        scope,
        request_context: None,
        request_details: None,
        workload: "spiffe://mandate.local/gateway",
        verified_claims: Some(claims),
    }
}

#[tokio::test]
async fn pre_verified_claims_mint_the_same_token_without_reverifying() {
    let f = fixture().await;
    let claims = peek_claims(&f.access_token().await).unwrap();
    let minted = mint(&f.authz, &pre_verified(&claims, None), "p").await.unwrap();
    let txn = peek_claims(&minted.token).unwrap();
    assert_eq!((txn["sub"].as_str(), txn["scope"].as_str()), (Some(AGENT), Some("read write")));
    assert_eq!(txn["act"], json!({"sub": AGENT}));
    assert_eq!(f.last_event().await["txn"].as_str(), Some(minted.txn.as_str()));
}

#[tokio::test]
async fn pre_verified_claims_keep_the_scope_and_expiry_rules() {
    let f = fixture().await;
    let mut claims = peek_claims(&f.access_token().await).unwrap();
    refused(
        mint(&f.authz, &pre_verified(&claims, Some("read admin")), "p").await,
        OAuthErrorCode::InvalidScope,
        "admin",
    );
    f.clock.advance_ms(301_000);
    refused(mint(&f.authz, &pre_verified(&claims, None), "p").await, OAuthErrorCode::InvalidRequest, "expired");
    claims.as_object_mut().unwrap().remove("scope");
    refused(
        mint(&f.authz, &pre_verified(&claims, None), "p").await,
        OAuthErrorCode::InvalidScope,
        "cannot be determined",
    );
}

#[tokio::test]
async fn mint_unrecorded_leaves_the_event_to_the_caller() {
    let f = fixture().await;
    let claims = peek_claims(&f.access_token().await).unwrap();
    let before = f.authz.log.checkpoint().await.unwrap().tree_size;
    let done = mint_unrecorded(&f.authz, &pre_verified(&claims, None), "u").await;
    assert_eq!(f.authz.log.checkpoint().await.unwrap().tree_size, before);
    let minted = done.outcome.unwrap();
    assert_eq!((done.event.action.as_str(), done.event.txn.as_deref()), (ACTION, Some(minted.txn.as_str())));
    let refusal = mint_unrecorded(&f.authz, &pre_verified(&claims, Some("admin")), "u").await;
    assert!(refusal.outcome.is_err());
    assert_eq!(refusal.event.decision, mandate_core::Decision::Deny);
}
