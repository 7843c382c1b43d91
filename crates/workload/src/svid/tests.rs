//! Unit tests of the CA, the SVIDs, the bundle and join tokens against a real SQLite store,
//! audit log and keyring, with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use mandate_audit::CheckpointPolicy;
use mandate_authz::keyring::{PURPOSE_JWT_SVID, PURPOSE_TOKEN, PURPOSE_X509_CA};
use mandate_authz::registry::{self, NewAgent};
use mandate_authz::{Authz, AuthzConfig};
use mandate_core::{Clock, ManualClock};
use mandate_crypto::{Kek, SigningKey};
use mandate_store::{SqliteStore, Store};
use serde_json::json;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::join::{self, JoinError};
use super::*;
use crate::bundle::{TrustBundle, pem_encode};
use crate::ca::{SpiffeConfig, UpstreamCa, verify_signed_by};

const NOW_MS: i64 = 1_795_424_400_000;
const TD: &str = "example.org";
const ISSUER: &str = "https://mandate.example.org";

struct Fixture {
    ca: SpiffeCa,
    clock: ManualClock,
    agent: Agent,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn authz(&self) -> &Authz {
        self.ca.authz()
    }

    /// Every audit event so far, as JSON.
    async fn events(&self) -> Vec<Value> {
        let store = &self.authz().store;
        let len = store.audit_len().await.unwrap();
        let entries = store.audit_entries(0, len).await.unwrap();
        entries.iter().map(|e| serde_json::from_str(&e.canonical).unwrap()).collect()
    }

    async fn events_named(&self, action: &str) -> Vec<Value> {
        self.events().await.into_iter().filter(|e| e["action"] == action).collect()
    }

    /// Another CA object over the same store and keys, as a restart or a replica would have.
    fn sibling(&self, upstream: Option<UpstreamCa>) -> SpiffeCa {
        SpiffeCa::new(self.authz().clone(), self.ca.config().clone(), upstream)
    }
}

async fn fixture_with(config: SpiffeConfig, upstream: Option<UpstreamCa>) -> Fixture {
    mandate_crypto::init().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("m.db")).unwrap());
    let clock = ManualClock::at_ms(NOW_MS);
    let policy = CheckpointPolicy { every_events: 1000, every: Duration::from_secs(3600) };
    let shared_clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let config_authz =
        AuthzConfig { key_publish_lead_secs: 0, ..AuthzConfig::new(ISSUER, TrustDomain::parse(TD).unwrap()) };
    let kek = Kek::generate().unwrap().0;
    let authz = Authz::start(store, kek, shared_clock, config_authz, policy, "example.org/audit").await.unwrap();
    registry::create_owner(&authz, "alice", None, "t").await.unwrap();
    let new =
        NewAgent { name: "bot".into(), owner: "alice".into(), scopes: vec![], selectors: vec![], ..Default::default() };
    let agent = registry::create_agent(&authz, new, "t").await.unwrap();
    Fixture { ca: SpiffeCa::new(authz, config, upstream), clock, agent, _dir: dir }
}

async fn fixture() -> Fixture {
    fixture_with(SpiffeConfig::default(), None).await
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------- X.509 ----

#[tokio::test]
async fn x509_svid_leaf_has_the_spiffe_leaf_profile_and_chains_to_the_root() {
    let f = fixture().await;
    let svid = issue_x509(&f.ca, &f.agent, "c-1").await.unwrap();
    assert_eq!(svid.spiffe_id.as_str(), "spiffe://example.org/agent/bot");
    assert_eq!(svid.cert_chain_der.len(), 1, "no upstream root: the chain is the leaf alone");
    let leaf = parse(&svid.cert_chain_der[0]);

    // Exactly one URI SAN, the agent's SPIFFE ID; empty subject, so the SAN is critical.
    assert_eq!(uri_sans(&leaf), vec!["spiffe://example.org/agent/bot".to_owned()]);
    assert!(leaf.subject().iter_attributes().next().is_none());
    assert!(leaf.subject_alternative_name().unwrap().unwrap().critical);
    // Not a CA; key usage critical, digitalSignature only; EKU server + client auth.
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca && bc.critical);
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);

    // TTL: one hour from now, backdated slightly.
    let now = NOW_MS / 1000;
    assert_eq!(leaf.validity().not_before.timestamp(), now - X509_BACKDATE_SECS);
    assert_eq!(leaf.validity().not_after.timestamp(), now + 3600);
    assert_eq!(svid.expires_at_ms, (now + 3600) * 1000);

    // The leaf verifies under the CA certificate, which is a self-signed SPIFFE signing cert.
    let roots = f.ca.x509_authorities().await.unwrap();
    assert_eq!(roots.len(), 1);
    verify_signed_by(&svid.cert_chain_der[0], &roots[0]).unwrap();
    verify_signed_by(&roots[0], &roots[0]).unwrap();
    let root = parse(&roots[0]);
    assert_eq!(uri_sans(&root), vec!["spiffe://example.org".to_owned()]);
    assert!(root.basic_constraints().unwrap().unwrap().value.ca);
    let root_ku = root.key_usage().unwrap().unwrap().value;
    assert!(root_ku.key_cert_sign() && root_ku.crl_sign() && !root_ku.digital_signature());
    assert!(root.subject().to_string().contains(crate::ca::CA_COMMON_NAME));
    // The root's key is the keyring's x509-ca key.
    let ca_key = f.authz().keys.signer_for(PURPOSE_X509_CA, Alg::ES256).unwrap();
    assert_eq!(root.public_key().subject_public_key.data.as_ref(), ca_key.public().raw());

    // The private key belongs to the leaf.
    let pair = KeyPair::try_from(svid.private_key_pkcs8_der.as_slice()).unwrap();
    assert_eq!(pair.der_bytes(), leaf.public_key().subject_public_key.data.as_ref());
}

#[tokio::test]
async fn x509_issuance_is_audited_with_agent_owner_and_serial() {
    let f = fixture().await;
    let svid = issue_x509(&f.ca, &f.agent, "c-x509").await.unwrap();
    let issued = f.events_named("svid.x509.issue").await;
    assert_eq!(issued.len(), 1);
    let event = &issued[0];
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["agent"], "spiffe://example.org/agent/bot");
    assert_eq!(event["owner"], "alice");
    assert_eq!(event["jti"], svid.serial.as_str());
    assert_eq!(event["correlation_id"], "c-x509");
    assert_eq!(hex::encode(parse(&svid.cert_chain_der[0]).raw_serial()), svid.serial);
    assert_eq!(f.events_named("spiffe.ca.create").await.len(), 1);
}

#[tokio::test]
async fn ca_certificate_is_persisted_and_shared_until_renewal() {
    let f = fixture().await;
    let first = f.ca.authority().await.unwrap();
    let again = f.sibling(None).authority().await.unwrap();
    assert_eq!(first.cert_der(), again.cert_der(), "a restart or a replica serves the same root");
    assert_eq!(f.events_named("spiffe.ca.create").await.len(), 1);
    let old_leaf = issue_x509(&f.ca, &f.agent, "c").await.unwrap();

    // 340 days on, less than 30 days remain: the certificate is renewed with the same key.
    f.clock.advance_ms(340 * 86_400_000);
    let renewed = f.ca.authority().await.unwrap();
    assert_ne!(renewed.cert_der(), first.cert_der());
    assert_eq!(renewed.kid(), first.kid());
    assert_eq!(f.events_named("spiffe.ca.renew").await.len(), 1);
    // SVIDs issued under the old certificate still verify under the new one (same key and name).
    verify_signed_by(&old_leaf.cert_chain_der[0], renewed.cert_der()).unwrap();
    assert_eq!(f.sibling(None).authority().await.unwrap().cert_der(), renewed.cert_der());
}

#[tokio::test]
async fn leaves_never_outlive_the_ca_certificate() {
    let config = SpiffeConfig { ca_ttl_secs: 1800, ca_renew_before_secs: 0, ..SpiffeConfig::default() };
    let f = fixture_with(config, None).await;
    let svid = issue_x509(&f.ca, &f.agent, "c").await.unwrap();
    let ca_end = f.ca.authority().await.unwrap().not_after_secs();
    assert_eq!(ca_end, NOW_MS / 1000 + 1800);
    assert_eq!(parse(&svid.cert_chain_der[0]).validity().not_after.timestamp(), ca_end);
}

#[tokio::test]
async fn a_new_ca_key_gets_its_own_certificate_and_both_stay_in_the_bundle() {
    let f = fixture().await;
    let old = f.ca.authority().await.unwrap();
    f.authz().keys.rotate(&f.authz().log, PURPOSE_X509_CA, Alg::ES256, 0, NOW_MS, "rotate").await.unwrap();
    let new = f.ca.authority().await.unwrap();
    assert_ne!(new.kid(), old.kid());
    let roots = f.ca.x509_authorities().await.unwrap();
    assert_eq!(roots.len(), 2);
    assert!(roots.iter().any(|r| r == old.cert_der()) && roots.iter().any(|r| r == new.cert_der()));
}

fn upstream_root(cn: &str) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = datetime(NOW_MS / 1000 - 86_400).unwrap();
    params.not_after = datetime(NOW_MS / 1000 + 90 * 86_400).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn with_an_upstream_root_the_ca_is_an_intermediate_and_the_bundle_holds_the_root() {
    let (cert_pem, key_pem) = upstream_root("Operator Root");
    let upstream = UpstreamCa::from_pem(&cert_pem, &key_pem).unwrap();
    let root_der = upstream.cert_der().to_vec();
    let f = fixture_with(SpiffeConfig::default(), Some(upstream)).await;
    let svid = issue_x509(&f.ca, &f.agent, "c").await.unwrap();
    assert_eq!(svid.cert_chain_der.len(), 2, "leaf + intermediate");
    let intermediate = parse(&svid.cert_chain_der[1]);
    assert!(intermediate.basic_constraints().unwrap().unwrap().value.ca);
    assert_eq!(uri_sans(&intermediate), vec!["spiffe://example.org".to_owned()]);
    // The intermediate is capped by the root's expiry (90 days < the default year).
    assert_eq!(intermediate.validity().not_after.timestamp(), NOW_MS / 1000 + 90 * 86_400);
    verify_signed_by(&svid.cert_chain_der[0], &svid.cert_chain_der[1]).unwrap();
    verify_signed_by(&svid.cert_chain_der[1], &root_der).unwrap();
    assert!(verify_signed_by(&svid.cert_chain_der[0], &root_der).is_err());
    assert_eq!(f.ca.x509_authorities().await.unwrap(), vec![root_der.clone()]);
    let bundle = TrustBundle::current(&f.ca).await.unwrap().to_json();
    let x509: Vec<&Value> = bundle["keys"].as_array().unwrap().iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 1);
    let x5c = base64::engine::general_purpose::STANDARD.decode(x509[0]["x5c"][0].as_str().unwrap()).unwrap();
    assert_eq!(x5c, root_der);

    // A replica with the same upstream serves the same intermediate.
    let (c, k) = (cert_pem.clone(), key_pem.clone());
    let sibling = f.sibling(Some(UpstreamCa::from_pem(&c, &k).unwrap()));
    assert_eq!(sibling.authority().await.unwrap().cert_der(), svid.cert_chain_der[1].as_slice());
    // A different upstream root makes a new intermediate under it.
    let (other_cert, other_key) = upstream_root("Another Root");
    let other = UpstreamCa::from_pem(&other_cert, &other_key).unwrap();
    let other_root = other.cert_der().to_vec();
    let moved = f.sibling(Some(other)).authority().await.unwrap();
    verify_signed_by(moved.cert_der(), &other_root).unwrap();
}

#[test]
fn upstream_material_is_checked() {
    let (cert_pem, key_pem) = upstream_root("Root");
    let (_, other_key) = upstream_root("Other");
    assert!(matches!(UpstreamCa::from_pem(&cert_pem, &other_key), Err(SpiffeError::Upstream(_))));
    let two = format!("{cert_pem}{cert_pem}");
    assert!(matches!(UpstreamCa::from_pem(&two, &key_pem), Err(SpiffeError::Upstream(_))));
    assert!(matches!(UpstreamCa::from_pem("", &key_pem), Err(SpiffeError::Upstream(_))));
    // A leaf certificate cannot be an upstream CA.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::new(vec!["leaf.example".to_owned()]).unwrap().self_signed(&key).unwrap();
    assert!(matches!(UpstreamCa::from_pem(&leaf.pem(), &key.serialize_pem()), Err(SpiffeError::Upstream(_))));
    assert!(UpstreamCa::from_pem(&cert_pem, &key_pem).is_ok());
}

// ------------------------------------------------------------------------------------ JWT ----

#[tokio::test]
async fn jwt_svid_has_the_spiffe_claims_and_validates() {
    let f = fixture().await;
    let audience = vec!["https://api.example.com".to_owned()];
    let svid = issue_jwt(&f.ca, &f.agent, &audience, "c-jwt").await.unwrap();
    let key = f.authz().keys.signer_for(PURPOSE_JWT_SVID, Alg::ES256).unwrap();
    let header = peek_header(&svid.token).unwrap();
    assert_eq!(header, json!({"alg": "ES256", "kid": key.kid(), "typ": "JWT"}));
    let claims = mandate_crypto::jose::peek_claims(&svid.token).unwrap();
    let now = NOW_MS / 1000;
    assert_eq!(claims["sub"], "spiffe://example.org/agent/bot");
    assert_eq!(claims["aud"], "https://api.example.com");
    assert_eq!(claims["iss"], "https://mandate.example.org/spiffe");
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["exp"], now + 300);
    assert_eq!(claims["jti"], svid.jti.as_str());
    assert_eq!(svid.expires_at, now + 300);

    let (id, validated) = validate_jwt(&f.ca, &svid.token, "https://api.example.com").unwrap();
    assert_eq!(id, f.agent.spiffe_id);
    assert_eq!(validated, claims);

    let event = &f.events_named("svid.jwt.issue").await[0];
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["agent"], "spiffe://example.org/agent/bot");
    assert_eq!(event["owner"], "alice");
    assert_eq!(event["jti"], svid.jti.as_str());
    assert_eq!(event["resource"], "https://api.example.com");
}

#[tokio::test]
async fn several_audiences_become_an_array_and_each_validates() {
    let f = fixture().await;
    let audience = vec!["a".to_owned(), "b".to_owned()];
    let svid = issue_jwt(&f.ca, &f.agent, &audience, "c").await.unwrap();
    assert_eq!(mandate_crypto::jose::peek_claims(&svid.token).unwrap()["aud"], json!(["a", "b"]));
    assert!(validate_jwt(&f.ca, &svid.token, "a").is_ok());
    assert!(validate_jwt(&f.ca, &svid.token, "b").is_ok());
    assert!(validate_jwt(&f.ca, &svid.token, "c").is_err());
}

#[tokio::test]
async fn an_empty_audience_is_refused_and_the_refusal_audited() {
    let f = fixture().await;
    assert!(matches!(issue_jwt(&f.ca, &f.agent, &[], "c-empty").await, Err(SpiffeError::AudienceRequired)));
    let blank = vec![String::new()];
    assert!(matches!(issue_jwt(&f.ca, &f.agent, &blank, "c").await, Err(SpiffeError::InvalidAudience(_))));
    let too_many: Vec<String> = (0..=MAX_AUDIENCES).map(|i| format!("a{i}")).collect();
    assert!(matches!(issue_jwt(&f.ca, &f.agent, &too_many, "c").await, Err(SpiffeError::InvalidAudience(_))));
    let refused = f.events_named("svid.jwt.issue").await;
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|e| e["decision"] == "deny" && e["reason"] == "invalid_request" && e["jti"].is_null()));
    assert_eq!(refused[0]["correlation_id"], "c-empty");
}

#[tokio::test]
async fn validation_rejects_wrong_audience_expiry_other_keys_and_algorithms() {
    let f = fixture().await;
    let aud = vec!["svc".to_owned()];
    let svid = issue_jwt(&f.ca, &f.agent, &aud, "c").await.unwrap();
    let keys = f.authz().keys.published_for(PURPOSE_JWT_SVID);
    let td = f.ca.trust_domain().clone();
    let now = NOW_MS / 1000;
    let check = |token: &str, now: i64| validate_jwt_with(&keys, &td, token, "svc", now, 0);

    assert!(check(&svid.token, now).is_ok());
    assert!(matches!(
        validate_jwt_with(&keys, &td, &svid.token, "other", now, 0),
        Err(SpiffeError::InvalidJwt(JwtError::WrongAudience(_)))
    ));
    assert!(matches!(validate_jwt_with(&keys, &td, &svid.token, "", now, 0), Err(SpiffeError::AudienceRequired)));
    assert!(matches!(check(&svid.token, now + 301), Err(SpiffeError::InvalidJwt(JwtError::Expired))));
    // Through the CA's clock too (leeway 60 s).
    f.clock.advance_ms(361_000);
    assert!(matches!(validate_jwt(&f.ca, &svid.token, "svc"), Err(SpiffeError::InvalidJwt(JwtError::Expired))));

    let spiffe_id = f.agent.spiffe_id.clone();
    let claims = |sub: &str| json!({"sub": sub, "aud": "svc", "exp": now + 300, "iat": now});
    // EdDSA is not a JWT-SVID algorithm, even when signed by a key we know.
    let ed = SigningKey::generate(Alg::EdDSA).unwrap();
    let ed_token = sign_jwt(&ed, "JWT", &claims(spiffe_id.as_str())).unwrap();
    let mut with_ed = keys.as_ref().clone();
    with_ed.push(ed.public().clone());
    assert!(matches!(
        validate_jwt_with(&with_ed, &td, &ed_token, "svc", now, 0),
        Err(SpiffeError::InvalidJwt(JwtError::AlgorithmNotAllowed(_)))
    ));
    assert!(matches!(mint_jwt(&ed, ISSUER, &spiffe_id, &aud, now, 300), Err(SpiffeError::Sign(_))));
    // ES256 by a key outside the JWT-SVID set: a stranger's, and Mandate's own access-token key.
    let stranger = SigningKey::generate(Alg::ES256).unwrap();
    let foreign = mint_jwt(&stranger, ISSUER, &spiffe_id, &aud, now, 300).unwrap();
    assert!(matches!(check(&foreign.token, now), Err(SpiffeError::InvalidJwt(JwtError::UnknownKey(_)))));
    let token_key = f.authz().keys.signer_for(PURPOSE_TOKEN, Alg::ES256).unwrap();
    let access_key_signed = mint_jwt(&token_key, ISSUER, &spiffe_id, &aud, now, 300).unwrap();
    assert!(check(&access_key_signed.token, now).is_err());
    // Right key, wrong typ; no kid; a subject outside the trust domain or without a path.
    let svid_key = f.authz().keys.signer_for(PURPOSE_JWT_SVID, Alg::ES256).unwrap();
    let at = sign_jwt(&svid_key, "at+jwt", &claims(spiffe_id.as_str())).unwrap();
    assert!(matches!(check(&at, now), Err(SpiffeError::InvalidJwt(JwtError::WrongType { .. }))));
    let no_kid = unsigned_header_swap(&svid_key, json!({"alg": "ES256", "typ": "JWT"}), &claims(spiffe_id.as_str()));
    assert!(check(&no_kid, now).is_err());
    let other_td = sign_jwt(&svid_key, "JWT", &claims("spiffe://evil.example/agent/bot")).unwrap();
    assert!(matches!(check(&other_td, now), Err(SpiffeError::InvalidSpiffeId(_))));
    let root_only = sign_jwt(&svid_key, "JWT", &claims("spiffe://example.org")).unwrap();
    assert!(matches!(check(&root_only, now), Err(SpiffeError::InvalidSpiffeId(_))));
    // A tampered payload fails the signature.
    let mut parts: Vec<String> = svid.token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims("spiffe://example.org/agent/other").to_string());
    assert!(matches!(check(&parts.join("."), now), Err(SpiffeError::InvalidJwt(JwtError::BadSignature))));
}

/// A JWS with an arbitrary header, signed by `key`.
fn unsigned_header_swap(key: &SigningKey, header: Value, claims: &Value) -> String {
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[test]
fn spiffe_ids_follow_the_spec() {
    for good in ["spiffe://example.org/agent/bot", "spiffe://example.org", "spiffe://a-b_c.d/A/b.c/d-e_f"] {
        assert!(parse_spiffe_id(good).is_ok(), "{good} refused");
    }
    let long = format!("spiffe://example.org/{}", "a".repeat(2040));
    for bad in [
        "SPIFFE://example.org/x",
        "spiffe://Example.org/x",
        "spiffe://example.org/a//b",
        "spiffe://example.org/a/",
        "spiffe://example.org:443/x",
        "spiffe://user@example.org/x",
        "spiffe://example.org/a%20b",
        "spiffe://example.org/x?y=1",
        "spiffe://example.org/x#f",
        "spiffe://example.org/./x",
        "spiffe://example.org/../x",
        "spiffe:///x",
        "https://example.org/x",
        long.as_str(),
    ] {
        assert!(parse_spiffe_id(bad).is_err(), "{bad} accepted");
    }
    let id = parse_spiffe_id("spiffe://example.org/agent/bot").unwrap();
    assert_eq!(spiffe_trust_domain(&id), "example.org");
}

// --------------------------------------------------------------------------------- bundle ----

#[tokio::test]
async fn bundle_has_the_spiffe_shape_and_its_sequence_moves_only_on_change() {
    let f = fixture().await;
    let bundle = TrustBundle::current(&f.ca).await.unwrap();
    let doc = bundle.to_json();
    assert_eq!(doc["spiffe_sequence"], 1);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    let keys = doc["keys"].as_array().unwrap();
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    let jwt: Vec<&Value> = keys.iter().filter(|k| k["use"] == "jwt-svid").collect();
    assert_eq!((x509.len(), jwt.len()), (1, 1));
    assert_eq!(x509[0]["kty"], "EC");
    assert_eq!(x509[0]["crv"], "P-256");
    assert!(x509[0].get("kid").is_none(), "X.509 authorities carry no kid");
    assert_eq!(x509[0]["x5c"].as_array().unwrap().len(), 1);
    let ca_key = f.authz().keys.signer_for(PURPOSE_X509_CA, Alg::ES256).unwrap();
    assert_eq!(x509[0]["x"], ca_key.public().jwk()["x"]);
    let jwt_key = f.authz().keys.signer_for(PURPOSE_JWT_SVID, Alg::ES256).unwrap();
    assert_eq!(jwt[0]["kid"], jwt_key.kid());
    assert!(bundle.x509_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));

    // Unchanged content keeps its number, also for another instance over the same store.
    assert_eq!(TrustBundle::current(&f.ca).await.unwrap().sequence, 1);
    assert_eq!(TrustBundle::current(&f.sibling(None)).await.unwrap().sequence, 1);
    // A new JWT-SVID key changes the content: the number goes up, once, and it is audited.
    f.authz().keys.rotate(&f.authz().log, PURPOSE_JWT_SVID, Alg::ES256, 0, NOW_MS, "r").await.unwrap();
    let after = TrustBundle::current(&f.ca).await.unwrap();
    assert_eq!(after.sequence, 2);
    assert_eq!(after.jwt_authorities.len(), 2);
    assert_eq!(TrustBundle::current(&f.sibling(None)).await.unwrap().sequence, 2);
    assert_eq!(f.events_named("spiffe.bundle.update").await.len(), 2);

    // The JWT bundle for the Workload API is a plain JWKS of the JWT-SVID keys only.
    let jwks: Value = serde_json::from_slice(&crate::bundle::jwt_bundle_bytes(&f.ca)).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert!(jwks["keys"].as_array().unwrap().iter().all(|k| k["kid"].is_string() && k["x5c"].is_null()));
}

// ------------------------------------------------------------------------------------ join ----

fn csr_for(key: &KeyPair, asked_uri: &str) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(asked_uri.to_owned().try_into().unwrap())];
    params.serialize_request(key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn a_join_token_certifies_the_csr_key_once_for_its_agent() {
    let f = fixture().await;
    let created = join::create_join_token(f.authz(), "bot", 900, "c-create").await.unwrap();
    assert!(created.token.starts_with(join::JOIN_TOKEN_PREFIX));
    assert_eq!(created.record.token_hash, mandate_crypto::hash_secret(&created.token));
    let stored = f.authz().store.join_token(&created.record.token_hash).await.unwrap().unwrap();
    assert_eq!(stored.expires_at_ms, NOW_MS + 900_000);

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // The CSR asks for another identity; only its key is used.
    let csr = csr_for(&key, "spiffe://evil.example/agent/root");
    let joined = join::redeem(&f.ca, &created.token, &csr, "c-join").await.unwrap();
    assert_eq!(joined.spiffe_id, f.agent.spiffe_id);
    let leaf = parse(&joined.chain_der[0]);
    assert_eq!(uri_sans(&leaf), vec!["spiffe://example.org/agent/bot".to_owned()]);
    assert_eq!(leaf.public_key().subject_public_key.data.as_ref(), key.der_bytes());
    verify_signed_by(&joined.chain_der[0], &joined.bundle_der[0]).unwrap();
    assert_eq!(joined.expires_at_ms, (NOW_MS / 1000 + 3600) * 1000);

    let again = join::redeem(&f.ca, &created.token, &csr, "c-again").await;
    assert!(matches!(again, Err(JoinError::InvalidToken(_))), "{again:?}");

    let events = f.events_named("spiffe.join").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(events[0]["agent"], "spiffe://example.org/agent/bot");
    assert_eq!(events[0]["owner"], "alice");
    assert_eq!(events[0]["jti"], hex::encode(leaf.raw_serial()));
    assert_eq!(events[1]["decision"], "deny");
    assert_eq!(events[1]["reason"], "invalid_token");
    let created_event = &f.events_named("join_token.create").await[0];
    assert_eq!(created_event["owner"], "alice");
    // The token itself appears in no event.
    assert!(f.events().await.iter().all(|e| !e.to_string().contains(&created.token)));
}

#[tokio::test]
async fn expired_unknown_and_malformed_joins_are_refused_without_spending_the_token() {
    let f = fixture().await;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_for(&key, "spiffe://example.org/x");
    assert!(matches!(join::redeem(&f.ca, "mjt_unknown", &csr, "c").await, Err(JoinError::InvalidToken(_))));
    assert!(matches!(join::redeem(&f.ca, "", &csr, "c").await, Err(JoinError::InvalidRequest(_))));

    let created = join::create_join_token(f.authz(), "bot", 60, "c").await.unwrap();
    // A CSR whose signature does not verify.
    let der = crate::bundle::pem_decode(&csr, "CERTIFICATE REQUEST").remove(0);
    let mut tampered = der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let bad_sig = pem_encode("CERTIFICATE REQUEST", &tampered);
    assert!(matches!(join::redeem(&f.ca, &created.token, &bad_sig, "c").await, Err(JoinError::InvalidRequest(_))));
    assert!(matches!(join::redeem(&f.ca, &created.token, "garbage", "c").await, Err(JoinError::InvalidRequest(_))));
    // An Ed25519 key is refused (X.509-SVIDs here are ECDSA).
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ed_csr = csr_for(&ed, "spiffe://example.org/x");
    assert!(matches!(join::redeem(&f.ca, &created.token, &ed_csr, "c").await, Err(JoinError::InvalidRequest(_))));
    // None of that spent the token; expiry does.
    f.clock.advance_ms(60_000);
    let expired = join::redeem(&f.ca, &created.token, &csr, "c").await;
    assert!(matches!(&expired, Err(JoinError::InvalidToken(m)) if m.contains("expired")), "{expired:?}");
    let denied = f.events_named("spiffe.join").await;
    assert_eq!(denied.len(), 6);
    assert!(denied.iter().all(|e| e["decision"] == "deny"));
}

#[tokio::test]
async fn join_tokens_need_an_agent_and_a_sane_ttl() {
    let f = fixture().await;
    assert!(matches!(join::create_join_token(f.authz(), "ghost", 900, "c").await, Err(JoinError::NotFound(_))));
    assert!(matches!(join::create_join_token(f.authz(), "bot", 0, "c").await, Err(JoinError::InvalidRequest(_))));
    let week = join::MAX_JOIN_TOKEN_TTL_SECS + 1;
    assert!(matches!(join::create_join_token(f.authz(), "bot", week, "c").await, Err(JoinError::InvalidRequest(_))));
    let refused = f.events_named("join_token.create").await;
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|e| e["decision"] == "deny"));
}

#[tokio::test]
async fn selectors_are_validated_replaced_and_audited() {
    let f = fixture().await;
    let wanted = vec!["unix:uid:1000".to_owned(), "unix:path:/usr/bin/agent".to_owned(), "unix:uid:1000".to_owned()];
    let set = join::set_selectors(f.authz(), "bot", &wanted, "c").await.unwrap();
    assert_eq!(set, vec!["unix:uid:1000".to_owned(), "unix:path:/usr/bin/agent".to_owned()]);
    assert_eq!(f.authz().store.agent("bot").await.unwrap().unwrap().selectors, set);
    for bad in ["nocolon", ":x", "unix:", "Unix:uid:1", "unix:uid:1 2"] {
        let result = join::set_selectors(f.authz(), "bot", &[bad.to_owned()], "c").await;
        assert!(matches!(result, Err(JoinError::InvalidRequest(_))), "{bad} accepted");
    }
    assert!(matches!(join::set_selectors(f.authz(), "ghost", &set, "c").await, Err(JoinError::NotFound(_))));
    let events = f.events_named("agent.selectors.set").await;
    assert_eq!(events.len(), 7);
    assert_eq!(events[0]["decision"], "allow");
    assert!(events[1..].iter().all(|e| e["decision"] == "deny"));
}

// ------------------------------------------- interop: the `spiffe` crate as relying party ----

/// A fixture on the real time, because the `spiffe` crate checks expiry against the system clock.
async fn fixture_now(upstream: Option<UpstreamCa>) -> Fixture {
    let f = fixture_with(SpiffeConfig::default(), upstream).await;
    f.clock.set_ms(mandate_core::SystemClock.now_ms());
    f
}

#[tokio::test]
async fn the_spiffe_crate_accepts_our_x509_svids_and_bundle() {
    let (cert_pem, key_pem) = upstream_root("Interop Root");
    for upstream in [None, Some(UpstreamCa::from_pem(&cert_pem, &key_pem).unwrap())] {
        let intermediate = upstream.is_some();
        let f = fixture_now(upstream).await;
        let svid = issue_x509(&f.ca, &f.agent, "c").await.unwrap();
        let chain = crate::bundle::concat_der(&svid.cert_chain_der);
        let parsed = spiffe::X509Svid::parse_from_der(&chain, &svid.private_key_pkcs8_der).unwrap();
        assert_eq!(parsed.spiffe_id().to_string(), "spiffe://example.org/agent/bot");
        assert_eq!(parsed.cert_chain().len(), if intermediate { 2 } else { 1 });
        let td = spiffe::TrustDomain::new(TD).unwrap();
        assert!(parsed.spiffe_id().is_member_of(&td));
        let roots = crate::bundle::concat_der(&f.ca.x509_authorities().await.unwrap());
        let bundle = spiffe::X509Bundle::parse_from_der(td, &roots).unwrap();
        assert_eq!(bundle.authorities().len(), 1);
    }
}

#[tokio::test]
async fn the_spiffe_crate_validates_our_jwt_svids_against_our_jwks() {
    let f = fixture_now(None).await;
    let audience = vec!["https://api.example.com".to_owned()];
    let svid = issue_jwt(&f.ca, &f.agent, &audience, "c").await.unwrap();
    let td = spiffe::TrustDomain::new(TD).unwrap();
    let jwt_bundle = spiffe::JwtBundle::from_jwt_authorities(td, &crate::bundle::jwt_bundle_bytes(&f.ca)).unwrap();
    let mut set = spiffe::JwtBundleSet::new();
    set.add_bundle(jwt_bundle);
    let parsed = spiffe::JwtSvid::parse_and_validate(&svid.token, &set, &["https://api.example.com"]).unwrap();
    assert_eq!(parsed.spiffe_id().to_string(), "spiffe://example.org/agent/bot");
    assert_eq!(parsed.audience(), audience.as_slice());
    assert!(spiffe::JwtSvid::parse_and_validate(&svid.token, &set, &["https://elsewhere"]).is_err());

    // The bundle's jwt-svid JWKs (use: jwt-svid) are accepted by the crate as well.
    let doc = TrustBundle::current(&f.ca).await.unwrap().to_json();
    let jwt_only: Vec<Value> =
        doc["keys"].as_array().unwrap().iter().filter(|k| k["use"] == "jwt-svid").cloned().collect();
    let bytes = json!({"keys": jwt_only}).to_string().into_bytes();
    let mut from_bundle = spiffe::JwtBundleSet::new();
    from_bundle
        .add_bundle(spiffe::JwtBundle::from_jwt_authorities(spiffe::TrustDomain::new(TD).unwrap(), &bytes).unwrap());
    assert!(spiffe::JwtSvid::parse_and_validate(&svid.token, &from_bundle, &["https://api.example.com"]).is_ok());

    // A token from a key outside the bundle is refused by the crate too.
    let stranger = SigningKey::generate(Alg::ES256).unwrap();
    let foreign = mint_jwt(&stranger, ISSUER, &f.agent.spiffe_id, &audience, f.clock.now_secs(), 300).unwrap();
    assert!(spiffe::JwtSvid::parse_and_validate(&foreign.token, &set, &["https://api.example.com"]).is_err());
}
