//! RFC 9449 §4.3 DPoP proof checks, one refusal per rule, against proofs signed here.
#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_crypto::keys::thumbprint;
use mandate_crypto::{Alg, SigningKey};
use mandate_guard::dpop::{DpopCheck, DpopError, access_token_hash, single_proof};
use mandate_guard::{bound_token_matches, replay_key, verify_dpop_proof};
use serde_json::{Value, json};
use support::{b64, bare_jwk, header, proof, sign_with};

mod support;

const NOW: i64 = 1_700_000_000;
const URL: &str = "https://as.example.com/token";

fn claims() -> Value {
    json!({"jti": "e1j3V_bKic8-LAEB", "htm": "POST", "htu": URL, "iat": NOW})
}

fn ed() -> SigningKey {
    mandate_crypto::init().unwrap();
    SigningKey::generate(Alg::EdDSA).unwrap()
}

fn check() -> DpopCheck<'static> {
    DpopCheck::new("POST", URL, NOW)
}

fn with(claims: Value, name: &str, value: Value) -> Value {
    let mut claims = claims;
    claims[name] = value;
    claims
}

fn without(claims: Value, name: &str) -> Value {
    let mut claims = claims;
    claims.as_object_mut().unwrap().remove(name);
    claims
}

#[test]
fn valid_eddsa_and_es256_proofs_verify_with_their_thumbprint() {
    mandate_crypto::init().unwrap();
    for alg in [Alg::EdDSA, Alg::ES256] {
        let key = SigningKey::generate(alg).unwrap();
        let got = verify_dpop_proof(&proof(&key, &claims()), &check()).unwrap();
        assert_eq!(got.jkt, thumbprint(&bare_jwk(&key)), "{alg:?}");
        // Generated keys carry their thumbprint as kid.
        assert_eq!(got.jkt, key.kid());
        assert_eq!(
            (got.jti.as_str(), got.htm.as_str(), got.htu.as_str(), got.iat),
            ("e1j3V_bKic8-LAEB", "POST", URL, NOW)
        );
        assert_eq!((got.ath, got.nonce), (None, None));
        assert_eq!(
            replay_key(&verify_dpop_proof(&proof(&key, &claims()), &check()).unwrap()),
            format!("dpop:{}:e1j3V_bKic8-LAEB", key.kid())
        );
    }
}

#[test]
fn rfc_example_keys_have_the_expected_thumbprints() {
    // RFC 9449 §4.2's example proof key and the jkt §6.1 binds to it.
    let ec = json!({"kty": "EC", "crv": "P-256", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs", "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"});
    assert_eq!(thumbprint(&ec), "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    // RFC 8037 A.1 Ed25519 key (A.3 gives its thumbprint): sign a real proof with it.
    let seed = URL_SAFE_NO_PAD.decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").unwrap();
    let pkcs8 =
        [&[0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20][..], &seed]
            .concat();
    mandate_crypto::init().unwrap();
    let key = SigningKey::from_pkcs8(Alg::EdDSA, &pkcs8).unwrap();
    assert_eq!(bare_jwk(&key)["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    let got = verify_dpop_proof(&proof(&key, &claims()), &check()).unwrap();
    assert_eq!(got.jkt, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
}

#[test]
fn a_kid_or_alg_in_the_jwk_does_not_change_the_thumbprint() {
    let key = ed();
    let mut h = header(&key);
    h["jwk"]["kid"] = json!("my-key");
    h["jwk"]["alg"] = json!("EdDSA");
    let got = verify_dpop_proof(&sign_with(&key, &h, &claims()), &check()).unwrap();
    assert_eq!(got.jkt, key.kid());
}

#[test]
fn exactly_one_well_formed_jwt() {
    assert_eq!(single_proof(["a.b.c"]), Ok("a.b.c"));
    assert_eq!(single_proof([]), Err(DpopError::HeaderCount(0)));
    assert_eq!(single_proof(["a.b.c", "d.e.f", "g.h.i"]), Err(DpopError::HeaderCount(3)));
    let key = ed();
    let p = proof(&key, &claims());
    for bad in [format!("{p}, {p}"), format!("{p}.{p}"), "a.b".into(), String::new(), format!(" {p}")] {
        assert_eq!(verify_dpop_proof(&bad, &check()), Err(DpopError::NotSingleJwt), "{bad}");
    }
    let not_json = format!("{}.{}.AA", URL_SAFE_NO_PAD.encode("nope"), b64(&claims()));
    assert!(matches!(verify_dpop_proof(&not_json, &check()), Err(DpopError::Malformed(_))));
}

#[test]
fn typ_must_be_dpop_jwt() {
    let key = ed();
    for (typ, ok) in [
        (json!("DPoP+JWT"), true),
        (json!("JWT"), false),
        (json!("at+jwt"), false),
        (json!("application/dpop+jwt"), false),
        (json!(1), false),
    ] {
        let h = with(header(&key), "typ", typ.clone());
        let got = verify_dpop_proof(&sign_with(&key, &h, &claims()), &check());
        assert_eq!(got.is_ok(), ok, "{typ}");
        if !ok {
            assert!(matches!(got, Err(DpopError::WrongType(_))));
        }
    }
    let h = without(header(&key), "typ");
    assert_eq!(verify_dpop_proof(&sign_with(&key, &h, &claims()), &check()), Err(DpopError::WrongType(None)));
}

#[test]
fn only_eddsa_and_es256_are_accepted() {
    let key = ed();
    let body = b64(&claims());
    let none = format!("{}.{body}.", b64(&with(header(&key), "alg", json!("none"))));
    assert_eq!(verify_dpop_proof(&none, &check()), Err(DpopError::NotSingleJwt));
    let none = format!("{}.{body}.AA", b64(&with(header(&key), "alg", json!("none"))));
    assert_eq!(verify_dpop_proof(&none, &check()), Err(DpopError::AlgorithmNotAllowed(Some("none".into()))));
    for alg in ["HS256", "RS256", "ES384", "eddsa"] {
        let token = format!("{}.{body}.c2ln", b64(&with(header(&key), "alg", json!(alg))));
        assert_eq!(verify_dpop_proof(&token, &check()), Err(DpopError::AlgorithmNotAllowed(Some(alg.into()))));
    }
    let token = format!("{}.{body}.c2ln", b64(&without(header(&key), "alg")));
    assert_eq!(verify_dpop_proof(&token, &check()), Err(DpopError::AlgorithmNotAllowed(None)));
}

#[test]
fn jwk_must_be_present_public_and_fit_the_algorithm() {
    let key = ed();
    let h = without(header(&key), "jwk");
    assert_eq!(verify_dpop_proof(&sign_with(&key, &h, &claims()), &check()), Err(DpopError::MissingJwk));
    let mut h = header(&key);
    h["jwk"]["d"] = json!("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
    assert_eq!(verify_dpop_proof(&sign_with(&key, &h, &claims()), &check()), Err(DpopError::PrivateKey));
    let h = with(header(&key), "jwk", json!({"kty": "oct", "k": "c2VjcmV0"}));
    assert!(matches!(verify_dpop_proof(&sign_with(&key, &h, &claims()), &check()), Err(DpopError::BadJwk(_))));
    // The jwk declares an alg its key type cannot have.
    let mut h = header(&key);
    h["jwk"]["alg"] = json!("ES256");
    assert!(matches!(verify_dpop_proof(&sign_with(&key, &h, &claims()), &check()), Err(DpopError::BadJwk(_))));
    // Header says ES256, signed by an ES256 key, but the jwk is the Ed25519 key.
    let es = SigningKey::generate(Alg::ES256).unwrap();
    let h = with(header(&key), "alg", json!("ES256"));
    assert_eq!(verify_dpop_proof(&sign_with(&es, &h, &claims()), &check()), Err(DpopError::AlgorithmMismatch));
}

#[test]
fn signature_must_verify_with_the_header_key() {
    let key = ed();
    let other = ed();
    // Signed by another key than the one in the header.
    assert_eq!(verify_dpop_proof(&sign_with(&other, &header(&key), &claims()), &check()), Err(DpopError::BadSignature));
    // Claims swapped after signing.
    let good = proof(&key, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&with(claims(), "htm", json!("GET"))), parts[2]);
    assert_eq!(verify_dpop_proof(&tampered, &check()), Err(DpopError::BadSignature));
    let crit = with(header(&key), "crit", json!(["exp"]));
    assert!(matches!(verify_dpop_proof(&sign_with(&key, &crit, &claims()), &check()), Err(DpopError::Malformed(_))));
}

#[test]
fn required_claims_must_be_present() {
    let key = ed();
    for name in ["jti", "htm", "htu", "iat"] {
        let p = proof(&key, &without(claims(), name));
        assert_eq!(verify_dpop_proof(&p, &check()), Err(DpopError::MissingClaim(name)));
    }
    assert_eq!(
        verify_dpop_proof(&proof(&key, &with(claims(), "jti", json!(""))), &check()),
        Err(DpopError::MissingClaim("jti"))
    );
    assert_eq!(
        verify_dpop_proof(&proof(&key, &with(claims(), "iat", json!("now"))), &check()),
        Err(DpopError::MissingClaim("iat"))
    );
    assert_eq!(
        verify_dpop_proof(&proof(&key, &with(claims(), "jti", json!("j".repeat(257)))), &check()),
        Err(DpopError::JtiTooLong)
    );
    assert!(verify_dpop_proof(&proof(&key, &with(claims(), "jti", json!("j".repeat(256)))), &check()).is_ok());
}

#[test]
fn htm_must_equal_the_method_exactly() {
    let key = ed();
    for htm in ["GET", "post", "POST "] {
        let p = proof(&key, &with(claims(), "htm", json!(htm)));
        assert_eq!(verify_dpop_proof(&p, &check()), Err(DpopError::MethodMismatch), "{htm}");
    }
}

#[test]
fn htu_must_name_the_same_url() {
    let key = ed();
    for htu in [
        "https://as.example.com/token/",
        "https://as.example.com/other",
        "https://evil.example.com/token",
        "http://as.example.com/token",
        "https://as.example.com:8443/token",
        "//as.example.com/token",
        "/token",
        "not a url",
    ] {
        let p = proof(&key, &with(claims(), "htu", json!(htu)));
        assert_eq!(verify_dpop_proof(&p, &check()), Err(DpopError::UrlMismatch), "{htu}");
    }
}

#[test]
fn htu_is_compared_after_normalisation_and_without_query() {
    let key = ed();
    for htu in [
        "https://AS.Example.COM/token",
        "HTTPS://as.example.com/token",
        "https://as.example.com:443/token",
        "https://as.example.com/token?x=1",
        "https://as.example.com/token#frag",
        "https://as.example.com/%74oken",
        "https://as.example.com/a/../token",
    ] {
        let p = proof(&key, &with(claims(), "htu", json!(htu)));
        assert!(verify_dpop_proof(&p, &check()).is_ok(), "{htu}");
    }
    // The request URL is normalised too (query ignored, default port dropped).
    let p = proof(&key, &claims());
    assert!(verify_dpop_proof(&p, &DpopCheck::new("POST", "https://as.example.com:443/token?a=b", NOW)).is_ok());
    let p = proof(&key, &with(claims(), "htu", json!("http://localhost:8080")));
    assert!(verify_dpop_proof(&p, &DpopCheck::new("POST", "http://LOCALHOST:8080/", NOW)).is_ok());
}

#[test]
fn iat_must_be_recent_and_not_in_the_future() {
    let key = ed();
    let at = |iat: i64| verify_dpop_proof(&proof(&key, &with(claims(), "iat", json!(iat))), &check());
    let (age, leeway) = (check().max_age_secs, check().leeway_secs);
    assert_eq!((age, leeway), (300, 5));
    assert!(at(NOW - age - leeway).is_ok());
    assert_eq!(at(NOW - age - leeway - 1), Err(DpopError::TooOld));
    assert!(at(NOW + leeway).is_ok());
    assert_eq!(at(NOW + leeway + 1), Err(DpopError::IssuedInFuture));
    let strict = DpopCheck { max_age_secs: 10, leeway_secs: 0, ..check() };
    assert_eq!(
        verify_dpop_proof(&proof(&key, &with(claims(), "iat", json!(NOW - 11))), &strict),
        Err(DpopError::TooOld)
    );
}

#[test]
fn ath_must_hash_the_presented_access_token() {
    let key = ed();
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.sig";
    let rs = DpopCheck { access_token: Some(token), ..check() };
    let ath = URL_SAFE_NO_PAD.encode(mandate_crypto::sha256(token.as_bytes()));
    assert_eq!(access_token_hash(token), ath);
    let got = verify_dpop_proof(&proof(&key, &with(claims(), "ath", json!(ath))), &rs).unwrap();
    assert_eq!(got.ath.as_deref(), Some(ath.as_str()));
    assert_eq!(verify_dpop_proof(&proof(&key, &claims()), &rs), Err(DpopError::MissingClaim("ath")));
    let wrong = access_token_hash("another token");
    assert_eq!(verify_dpop_proof(&proof(&key, &with(claims(), "ath", json!(wrong))), &rs), Err(DpopError::AthMismatch));
    assert_eq!(
        verify_dpop_proof(&proof(&key, &with(claims(), "ath", json!(7))), &check()),
        Err(DpopError::MissingClaim("ath"))
    );
}

#[test]
fn nonce_must_match_when_the_server_demands_one() {
    let key = ed();
    let demanding = DpopCheck { expected_nonce: Some("n-1"), ..check() };
    let missing = verify_dpop_proof(&proof(&key, &claims()), &demanding).unwrap_err();
    assert_eq!(missing, DpopError::UseNonce { presented: false });
    assert_eq!(missing.error_code(), "use_dpop_nonce");
    let stale = verify_dpop_proof(&proof(&key, &with(claims(), "nonce", json!("n-0"))), &demanding).unwrap_err();
    assert_eq!(stale, DpopError::UseNonce { presented: true });
    assert_eq!(stale.error_code(), "use_dpop_nonce");
    let got = verify_dpop_proof(&proof(&key, &with(claims(), "nonce", json!("n-1"))), &demanding).unwrap();
    assert_eq!(got.nonce.as_deref(), Some("n-1"));
    // Other failures are invalid_dpop_proof.
    assert_eq!(DpopError::BadSignature.error_code(), "invalid_dpop_proof");
    assert_eq!(DpopError::UrlMismatch.error_code(), "invalid_dpop_proof");
}

#[test]
fn bound_token_must_name_the_proof_key() {
    let key = ed();
    let got = verify_dpop_proof(&proof(&key, &claims()), &check()).unwrap();
    assert!(bound_token_matches(&json!({"sub": "a", "cnf": {"jkt": key.kid()}}), &got));
    assert!(!bound_token_matches(&json!({"sub": "a", "cnf": {"jkt": ed().kid()}}), &got));
    assert!(!bound_token_matches(&json!({"sub": "a"}), &got));
    assert!(!bound_token_matches(&json!({"cnf": {"x5t#S256": key.kid()}}), &got));
}
