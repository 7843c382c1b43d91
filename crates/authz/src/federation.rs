//! Workload identity federation: the RFC 7523 §2.1 jwt-bearer grant trades a JWT from a trusted
//! external issuer (Kubernetes service-account tokens, GitHub Actions OIDC tokens, JWT-SVIDs) for
//! a Mandate access token of the agent a federation rule names. Also the rules' validation.

use std::collections::BTreeMap;

use mandate_core::{Agent, AuditEvent, FederationRule, Name, OAuthError, OAuthErrorCode, SubjectMatch};
use mandate_crypto::VerifyOptions;
use mandate_crypto::jose::peek_claims;
use mandate_crypto::jwk_set::parse_jwk_set;
use mandate_store::Mutation;
use serde_json::{Value, json};

use crate::client_auth::AuthenticatedClient;
use crate::jwks_fetch;
use crate::keyring::PURPOSE_JWT_SVID;
use crate::token::{AccessToken, TokenResponse, granted_scope, sign_access_token, target_resource};
use crate::trust::{IssuerKeys, verify_external};
use crate::{Authz, store_failure};

pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Private access-token claim naming the external identity: `{"iss", "sub", "rule"}`.
pub const FEDERATED_CLAIM: &str = "mandate_federated";
/// Federated tokens carry `client_id` = this prefix + the rule's name.
pub const CLIENT_PREFIX: &str = "federation:";
/// Mandate's own JWT-SVIDs are issued as `<issuer>/spiffe`; rules for it use the local keys.
pub const SPIFFE_ISSUER_SUFFIX: &str = "/spiffe";
pub const MIN_TTL_SECS: i64 = 30;
pub const MAX_TTL_SECS: i64 = 3600;
const MAX_CLAIM_CONDITIONS: usize = 32;
const MAX_FIELD_LEN: usize = 2048;
/// Claims a rule checks through its own fields, never as a claim condition.
const RESERVED_CLAIMS: &[&str] = &["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];
/// Header `typ` values accepted on assertions; an access token (`at+jwt`) or any other explicitly
/// typed JWT is refused, so one kind of token is never accepted as another.
const ASSERTION_TYPES: &[&str] = &["jwt"];
const MAX_JTI_LEN: usize = 256;

/// The issuer of Mandate's own JWT-SVIDs.
pub fn own_spiffe_issuer(authz: &Authz) -> String {
    format!("{}{SPIFFE_ISSUER_SUFFIX}", authz.config.issuer)
}

/// A rule as an operator describes it, before validation.
#[derive(Debug, Clone, Default)]
pub struct NewFederationRule {
    pub name: String,
    pub issuer: String,
    pub jwks_url: Option<String>,
    /// An inline JWK Set document.
    pub jwks: Option<String>,
    pub audience: String,
    pub subject: String,
    /// `exact` (default) or `prefix`.
    pub subject_match: Option<String>,
    /// Claim conditions: a top-level claim name, or a JSON pointer (`/kubernetes.io/namespace`).
    pub claims: BTreeMap<String, String>,
    pub agent: String,
    /// Defaults to [`MAX_TTL_SECS`]; the configured access-token lifetime still caps it.
    pub max_ttl_secs: Option<i64>,
}

/// Validates a rule; the agent's existence is checked here for a clear message (and again by
/// the store's foreign key).
pub async fn validate_rule(authz: &Authz, new: NewFederationRule) -> Result<FederationRule, String> {
    let name = Name::parse(&new.name).map_err(|e| e.to_string())?;
    let insecure = authz.config.allow_insecure_federation;
    let own_issuer = new.issuer == own_spiffe_issuer(authz);
    if !own_issuer {
        check_issuer(&new.issuer, insecure)?;
    }
    match (&new.jwks_url, &new.jwks, own_issuer) {
        (None, None, true) => {}
        (_, _, true) => return Err("rules for Mandate's own JWT-SVIDs use its keys; give no JWKS".into()),
        (Some(url), None, false) => {
            jwks_fetch::check_url(url, insecure).map_err(|e| e.to_string())?;
        }
        (None, Some(jwks), false) => {
            bounded("jwks", jwks, jwks_fetch::MAX_JWKS_BYTES)?;
            parse_jwk_set(jwks).map_err(|e| format!("inline JWKS: {e}"))?;
        }
        _ => return Err("give exactly one of jwks_url and jwks".into()),
    }
    bounded("audience", &new.audience, MAX_FIELD_LEN)?;
    bounded("subject", &new.subject, MAX_FIELD_LEN)?;
    let subject_match = match new.subject_match.as_deref() {
        None => SubjectMatch::Exact,
        Some(raw) => SubjectMatch::parse(raw).ok_or("subject_match must be exact or prefix")?,
    };
    check_claim_conditions(&new.claims)?;
    let max_ttl_secs = new.max_ttl_secs.unwrap_or(MAX_TTL_SECS);
    if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&max_ttl_secs) {
        return Err(format!("max_ttl_secs must be between {MIN_TTL_SECS} and {MAX_TTL_SECS}"));
    }
    let agent = Name::parse(&new.agent).map_err(|e| e.to_string())?;
    if authz.store.agent(agent.as_str()).await.map_err(|e| e.to_string())?.is_none() {
        return Err(format!("agent {agent} does not exist"));
    }
    Ok(FederationRule {
        name,
        issuer: new.issuer,
        jwks_url: new.jwks_url,
        jwks: new.jwks,
        audience: new.audience,
        subject: new.subject,
        subject_match,
        claims: new.claims,
        agent,
        max_ttl_secs,
        created_at_ms: authz.clock.now_ms(),
    })
}

pub(crate) fn bounded(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > max {
        return Err(format!("{what} is longer than {max} bytes"));
    }
    Ok(())
}

/// An issuer is compared exactly, so it is stored as given; it must be an https URL without
/// query or fragment (http only for a loopback host in insecure mode, for tests).
pub(crate) fn check_issuer(issuer: &str, insecure: bool) -> Result<(), String> {
    bounded("issuer", issuer, MAX_FIELD_LEN)?;
    let url = url::Url::parse(issuer).map_err(|e| format!("issuer is not a URL: {e}"))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("issuer must not have a query, fragment or credentials".into());
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err("issuer has no host".into()),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if insecure && loopback => Ok(()),
        _ => Err("issuer must be an https URL (http only for loopback with allow_insecure_federation)".into()),
    }
}

fn check_claim_conditions(claims: &BTreeMap<String, String>) -> Result<(), String> {
    if claims.len() > MAX_CLAIM_CONDITIONS {
        return Err(format!("at most {MAX_CLAIM_CONDITIONS} claim conditions"));
    }
    for (path, value) in claims {
        bounded("claim name", path, 256)?;
        bounded("claim value", value, MAX_FIELD_LEN)?;
        if RESERVED_CLAIMS.contains(&path.trim_start_matches('/')) {
            return Err(format!("claim {path:?} is checked by the rule's own fields"));
        }
        if path.starts_with('/') && path.split('/').skip(1).any(str::is_empty) {
            return Err(format!("claim path {path:?} has an empty segment"));
        }
    }
    Ok(())
}

/// The value a claim condition looks at: a top-level claim by name, or a nested one by JSON
/// pointer (RFC 6901: `/kubernetes.io/namespace`, with `~1` for `/` and `~0` for `~`).
pub fn claim_at<'v>(claims: &'v Value, path: &str) -> Option<&'v Value> {
    if path.starts_with('/') { claims.pointer(path) } else { claims.get(path) }
}

/// The answer to an assertion whose `jti` was exchanged before.
pub fn assertion_replayed() -> OAuthError {
    invalid_grant("the assertion was already used")
}

fn invalid_grant(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidGrant, description)
}

/// The jwt-bearer grant. Returns the response and the assertion's one-time-use guard (when it
/// has a `jti`), which the caller commits together with the issuance event. `dpop_jkt` binds
/// the token to a DPoP key (`crate::dpop`).
pub(crate) async fn jwt_bearer(
    authz: &Authz,
    assertion: &str,
    client: Option<&AuthenticatedClient>,
    resources: &[String],
    requested_scope: Option<&str>,
    dpop_jkt: Option<&str>,
    event: &mut AuditEvent,
) -> Result<(TokenResponse, Option<Mutation>), OAuthError> {
    let unverified = peek_claims(assertion).map_err(|e| invalid_grant(format!("assertion is not a JWT: {e}")))?;
    let issuer =
        unverified.get("iss").and_then(Value::as_str).ok_or_else(|| invalid_grant("the assertion has no \"iss\""))?;
    // As claimed, until verified: refusals are then traceable to who tried.
    event.subject = Some(external_subject(issuer, unverified.get("sub").and_then(Value::as_str).unwrap_or("")));
    let (rule, claims) = matching_rule(authz, issuer, assertion).await?;
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    event.subject = Some(external_subject(issuer, subject));
    let client_id = format!("{CLIENT_PREFIX}{}", rule.name);
    let external_jti = claims.get("jti").and_then(Value::as_str);
    event.detail = Some(match (client, external_jti) {
        (Some(c), Some(j)) => format!("rule={} assertion_jti={j} client={}", rule.name, c.client.client_id),
        (Some(c), None) => format!("rule={} client={}", rule.name, c.client.client_id),
        (None, Some(j)) => format!("rule={} assertion_jti={j}", rule.name),
        (None, None) => format!("rule={}", rule.name),
    });
    event.client = Some(client_id.clone());
    let agent = rule_agent(authz, &rule, client, event).await?;
    let resource = target_resource(authz, resources).await?;
    let scope = granted_scope(&agent, &resource, requested_scope)?;
    event.scope = Some(scope.to_string());
    let federated = json!({"iss": issuer, "sub": subject, "rule": rule.name.as_str()});
    let mut token = AccessToken::for_agent(&agent, &client_id, &resource, &scope, GRANT_JWT_BEARER)
        .ttl(authz.config.access_token_ttl_secs.min(rule.max_ttl_secs));
    token.extra.push((FEDERATED_CLAIM, federated));
    token.jkt = dpop_jkt;
    let response = sign_access_token(authz, &token, event)?;
    let guard = replay_guard(authz, issuer, &claims);
    Ok((response, guard))
}

/// `<iss>#<sub>`, bounded (the unverified form comes from the caller).
fn external_subject(issuer: &str, subject: &str) -> String {
    let mut text = format!("{issuer}#{subject}");
    if text.len() > 512 {
        let mut end = 512;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Tries the issuer's rules in name order; the first whose every condition holds wins.
async fn matching_rule(authz: &Authz, issuer: &str, assertion: &str) -> Result<(FederationRule, Value), OAuthError> {
    let rules: Vec<FederationRule> = authz
        .store
        .federation_rules()
        .await
        .map_err(store_failure)?
        .into_iter()
        .filter(|r| r.issuer == issuer)
        .collect();
    if rules.is_empty() {
        return Err(invalid_grant("no federation rule trusts the assertion's issuer"));
    }
    let mut refusals = Vec::new();
    for rule in rules {
        match check_rule(authz, &rule, assertion).await {
            Ok(claims) => return Ok((rule, claims)),
            Err(why) => refusals.push(format!("rule {}: {why}", rule.name)),
        }
    }
    Err(invalid_grant(format!("the assertion satisfies no federation rule ({})", refusals.join("; "))))
}

/// Signature, issuer, audience and time (`verify_jwt`: `exp` required and not passed, `nbf` and
/// `iat` numbers not in the future), then lifetime sanity, subject and claim conditions.
async fn check_rule(authz: &Authz, rule: &FederationRule, assertion: &str) -> Result<Value, String> {
    let claims = verify_for_rule(authz, rule, assertion).await?;
    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    let exp = number("exp").ok_or("\"exp\" is missing")?;
    if number("iat").is_some_and(|iat| iat > exp) || number("nbf").is_some_and(|nbf| nbf > exp) {
        return Err("\"iat\" or \"nbf\" is after \"exp\"".into());
    }
    match claims.get("jti") {
        None => {}
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI_LEN => {}
        Some(_) => return Err(format!("\"jti\" must be a string of 1 to {MAX_JTI_LEN} characters")),
    }
    let subject = claims.get("sub").and_then(Value::as_str).ok_or("\"sub\" is missing")?;
    let subject_ok = match rule.subject_match {
        SubjectMatch::Exact => subject == rule.subject,
        SubjectMatch::Prefix => subject.starts_with(&rule.subject),
    };
    if !subject_ok {
        return Err("\"sub\" does not match".into());
    }
    for (path, expected) in &rule.claims {
        match claim_at(&claims, path) {
            Some(Value::String(found)) if found == expected => {}
            Some(Value::String(_)) => return Err(format!("claim {path:?} does not match")),
            Some(_) => return Err(format!("claim {path:?} is not a string")),
            None => return Err(format!("claim {path:?} is missing")),
        }
    }
    Ok(claims)
}

async fn verify_for_rule(authz: &Authz, rule: &FederationRule, assertion: &str) -> Result<Value, String> {
    let config = &authz.config;
    let audience = [rule.audience.as_str()];
    let opts = VerifyOptions {
        typ: ASSERTION_TYPES,
        typ_optional: true,
        issuer: Some(&rule.issuer),
        audience: &audience,
        now: authz.clock.now_secs(),
        leeway_secs: config.leeway_secs,
    };
    let keys = match (&rule.jwks_url, &rule.jwks) {
        (Some(url), _) => IssuerKeys::Fetched(url),
        (None, Some(jwks)) => IssuerKeys::Inline(jwks),
        (None, None) if rule.issuer == own_spiffe_issuer(authz) => {
            IssuerKeys::Local(authz.keys.published_for(PURPOSE_JWT_SVID))
        }
        (None, None) => return Err("the rule has no keys".into()),
    };
    verify_external(authz, keys, assertion, &opts).await
}

/// The rule's agent; a client that authenticated as well must act for that same agent.
async fn rule_agent(
    authz: &Authz,
    rule: &FederationRule,
    client: Option<&AuthenticatedClient>,
    event: &mut AuditEvent,
) -> Result<Agent, OAuthError> {
    let agent = authz
        .store
        .agent(rule.agent.as_str())
        .await
        .map_err(store_failure)?
        .ok_or_else(|| invalid_grant(format!("rule {}: its agent no longer exists", rule.name)))?;
    event.agent = Some(agent.spiffe_id.to_string());
    event.owner = Some(agent.owner.to_string());
    if client.is_some_and(|c| c.agent.as_ref().map(|a| &a.name) != Some(&agent.name)) {
        return Err(invalid_grant("the authenticated client acts for another agent than the federation rule"));
    }
    Ok(agent)
}

/// A `jti`, when present, is single-use per issuer. The entry outlives the assertion's
/// acceptance window (`exp` plus leeway), so it cannot be replayed after the entry is purged.
fn replay_guard(authz: &Authz, issuer: &str, claims: &Value) -> Option<Mutation> {
    let jti = claims.get("jti").and_then(Value::as_str)?;
    let exp = claims.get("exp").and_then(Value::as_i64)?;
    Some(Mutation::ConsumeOnce {
        id: format!("federation:{issuer}:{jti}"),
        expires_at_secs: exp + authz.config.leeway_secs,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use mandate_core::{ManualClock, TrustDomain};
    use mandate_crypto::{Alg, SigningKey, jose::sign_jwt};

    use super::*;
    use crate::AuthzConfig;
    use crate::client_auth::Presented;
    use crate::registry::{self, NewAgent};
    use crate::token::{TokenRequest, token};

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://cluster.example/issuer";
    const RESOURCE: &str = "https://api.example.test";

    struct Fixture {
        authz: Authz,
        clock: ManualClock,
        key: SigningKey,
        _dir: tempfile::TempDir,
    }

    /// An in-process Mandate on a fresh SQLite store: owner alice, agent billing (read write),
    /// resource RESOURCE (read write admin), and an ES256 key standing in for an external issuer.
    async fn fixture(access_token_ttl_secs: i64) -> Fixture {
        let clock = ManualClock::at_ms(NOW * 1000);
        let config = AuthzConfig {
            access_token_ttl_secs,
            key_publish_lead_secs: 0,
            ..AuthzConfig::new("https://mandate.example", TrustDomain::parse("mandate.local").unwrap())
        };
        let (authz, dir) = crate::test_support::started(config, Arc::new(clock.clone())).await;
        registry::create_owner(&authz, "alice", None, "t").await.unwrap();
        let scopes = vec!["read".to_owned(), "write".to_owned()];
        let agent =
            NewAgent { name: "billing".into(), owner: "alice".into(), scopes, selectors: vec![], ..Default::default() };
        registry::create_agent(&authz, agent, "t").await.unwrap();
        let offered = ["read", "write", "admin"].map(String::from);
        registry::create_resource(&authz, RESOURCE, &offered, "t").await.unwrap();
        Fixture { authz, clock, key: SigningKey::generate(Alg::ES256).unwrap(), _dir: dir }
    }

    impl Fixture {
        fn rule(&self, name: &str) -> NewFederationRule {
            NewFederationRule {
                name: name.into(),
                issuer: ISSUER.into(),
                jwks: Some(json!({"keys": [self.key.public().jwk()]}).to_string()),
                audience: "mandate".into(),
                subject: "system:serviceaccount:prod:billing".into(),
                agent: "billing".into(),
                ..NewFederationRule::default()
            }
        }

        async fn add(&self, rule: NewFederationRule) -> FederationRule {
            registry::create_federation_rule(&self.authz, rule, "t").await.unwrap()
        }

        fn k8s_claims(&self) -> Value {
            json!({
                "iss": ISSUER, "sub": "system:serviceaccount:prod:billing", "aud": ["mandate"],
                "exp": NOW + 600, "iat": NOW - 10, "nbf": NOW - 10, "jti": uuid::Uuid::new_v4().to_string(),
                "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "billing", "uid": "u-1"}},
            })
        }

        fn sign(&self, claims: &Value) -> String {
            sign_jwt(&self.key, "JWT", claims).unwrap()
        }

        async fn exchange(&self, assertion: &str, scope: Option<&str>) -> Result<TokenResponse, OAuthError> {
            let request = TokenRequest {
                grant_type: Some(GRANT_JWT_BEARER.into()),
                resources: vec![RESOURCE.into()],
                scope: scope.map(str::to_owned),
                presented: Presented::None,
                assertion: Some(assertion.to_owned()),
                ..TokenRequest::default()
            };
            token(&self.authz, request, "t").await
        }
    }

    fn claims_of(token: &str) -> Value {
        peek_claims(token).unwrap()
    }

    fn refused(result: Result<TokenResponse, OAuthError>) -> String {
        let error = result.unwrap_err();
        assert_eq!(error.code, OAuthErrorCode::InvalidGrant, "{}", error.description);
        error.description
    }

    #[tokio::test]
    async fn issues_the_agents_token_with_the_federated_identity() {
        let f = fixture(300).await;
        f.add(NewFederationRule { max_ttl_secs: Some(120), ..f.rule("k8s") }).await;
        let issued = f.exchange(&f.sign(&f.k8s_claims()), Some("read admin")).await.unwrap();
        assert_eq!(issued.expires_in, 120, "the rule's max_ttl_secs caps the configured 300");
        assert_eq!(issued.scope, "read", "requested ∩ resource ∩ agent");
        let claims = claims_of(&issued.access_token);
        assert_eq!(claims["sub"], "spiffe://mandate.local/agent/billing");
        assert_eq!(claims["client_id"], "federation:k8s");
        assert_eq!(claims["aud"], RESOURCE);
        assert_eq!(claims["mandate_owner"], "alice");
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 120);
        assert_eq!(
            claims[FEDERATED_CLAIM],
            json!({"iss": ISSUER, "sub": "system:serviceaccount:prod:billing", "rule": "k8s"})
        );
        // Introspection sees a live token; the agent's kill switch ends it.
        let live = crate::introspect::check_active(&f.authz, &issued.access_token).await.unwrap();
        assert!(matches!(live, crate::introspect::Liveness::Active(_)));
        f.clock.advance_ms(1000);
        crate::revoke::revoke_subject(&f.authz, mandate_store::EpochKind::Agent, "billing", "t").await.unwrap();
        let dead = crate::introspect::check_active(&f.authz, &issued.access_token).await.unwrap();
        assert!(matches!(dead, crate::introspect::Liveness::Inactive(..)));
    }

    #[tokio::test]
    async fn the_configured_lifetime_caps_the_rule() {
        let f = fixture(60).await;
        f.add(f.rule("k8s")).await;
        assert_eq!(f.exchange(&f.sign(&f.k8s_claims()), None).await.unwrap().expires_in, 60);
    }

    #[tokio::test]
    async fn each_condition_is_enforced() {
        let f = fixture(300).await;
        let mut claims = BTreeMap::new();
        claims.insert("/kubernetes.io/namespace".to_owned(), "prod".to_owned());
        claims.insert("/kubernetes.io/serviceaccount/name".to_owned(), "billing".to_owned());
        f.add(NewFederationRule { claims, ..f.rule("k8s") }).await;
        let good = f.k8s_claims();
        assert!(f.exchange(&f.sign(&good), None).await.is_ok());
        let variant = |path: &str, value: Value| {
            let mut c = f.k8s_claims();
            *c.pointer_mut(path).unwrap() = value;
            c
        };
        let cases = [
            (variant("/aud", json!(["someone-else"])), "audience"),
            (variant("/sub", json!("system:serviceaccount:prod:other")), "\"sub\" does not match"),
            (variant("/exp", json!(NOW - 61)), "expired"),
            (variant("/nbf", json!(NOW + 120)), "not valid yet"),
            (variant("/iat", json!(NOW + 120)), "not valid yet"),
            (variant("/kubernetes.io/namespace", json!("dev")), "does not match"),
            (variant("/kubernetes.io/namespace", json!(7)), "is not a string"),
            (variant("/kubernetes.io/serviceaccount", json!({})), "is missing"),
            (variant("/jti", json!(42)), "\"jti\""),
        ];
        for (claims, expected) in cases {
            let why = refused(f.exchange(&f.sign(&claims), None).await);
            assert!(why.contains(expected), "{expected:?} not in {why:?}");
            assert!(why.contains("rule k8s"), "{why}");
        }
        // Within the 60 s leeway an expired assertion still passes; iat or nbf after exp does not.
        let mut late = f.k8s_claims();
        (late["exp"], late["iat"], late["nbf"]) = (json!(NOW - 59), json!(NOW - 600), json!(NOW - 600));
        assert!(f.exchange(&f.sign(&late), None).await.is_ok());
        late["jti"] = json!("late-2");
        late["iat"] = json!(NOW - 58);
        assert!(refused(f.exchange(&f.sign(&late), None).await).contains("after \"exp\""));
        // Another issuer, a foreign key, a typed access token, garbage.
        let why = refused(f.exchange(&f.sign(&variant("/iss", json!("https://other.example"))), None).await);
        assert!(why.contains("no federation rule trusts"), "{why}");
        let stranger = SigningKey::generate(Alg::ES256).unwrap();
        assert!(refused(f.exchange(&sign_jwt(&stranger, "JWT", &good).unwrap(), None).await).contains("unknown"));
        assert!(refused(f.exchange(&sign_jwt(&f.key, "at+jwt", &good).unwrap(), None).await).contains("type"));
        assert!(refused(f.exchange("not.a.jwt", None).await).contains("not a JWT"));
        let missing = f.exchange("", None).await.unwrap_err();
        assert_eq!(missing.code, OAuthErrorCode::InvalidRequest);
    }

    #[tokio::test]
    async fn a_jti_is_single_use_and_refusals_are_audited() {
        let f = fixture(300).await;
        f.add(f.rule("k8s")).await;
        let assertion = f.sign(&f.k8s_claims());
        f.exchange(&assertion, None).await.unwrap();
        assert_eq!(refused(f.exchange(&assertion, None).await), "the assertion was already used");
        // Without a jti, the assertion may be exchanged again (for its lifetime only).
        let mut no_jti = f.k8s_claims();
        no_jti.as_object_mut().unwrap().remove("jti");
        let again = f.sign(&no_jti);
        f.exchange(&again, None).await.unwrap();
        f.exchange(&again, None).await.unwrap();
        let mut out = Vec::new();
        mandate_audit::export(&f.authz.log, &mut out).await.unwrap();
        let events: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok()?.get("entry").cloned())
            .filter(|e| e["action"] == "token.issue")
            .collect();
        let decisions: Vec<&str> = events.iter().map(|e| e["decision"].as_str().unwrap()).collect();
        assert_eq!(decisions, ["allow", "deny", "allow", "allow"]);
        assert_eq!(events[0]["subject"], format!("{ISSUER}#system:serviceaccount:prod:billing"));
        assert_eq!(events[0]["client"], "federation:k8s");
        assert_eq!(events[0]["agent"], "spiffe://mandate.local/agent/billing");
        assert!(events[1]["detail"].as_str().unwrap().contains("already used"), "{}", events[1]);
        assert!(!String::from_utf8_lossy(&serde_json::to_vec(&events).unwrap()).contains(&assertion));
    }

    #[tokio::test]
    async fn the_first_rule_by_name_that_holds_wins() {
        let f = fixture(300).await;
        f.add(NewFederationRule {
            subject: "system:serviceaccount:dev:".into(),
            subject_match: Some("prefix".into()),
            ..f.rule("a-dev")
        })
        .await;
        f.add(NewFederationRule {
            subject: "system:serviceaccount:prod:".into(),
            subject_match: Some("prefix".into()),
            ..f.rule("b-prod")
        })
        .await;
        f.add(f.rule("c-exact")).await;
        let issued = f.exchange(&f.sign(&f.k8s_claims()), None).await.unwrap();
        assert_eq!(claims_of(&issued.access_token)["client_id"], "federation:b-prod");
        let mut other = f.k8s_claims();
        other["sub"] = json!("system:serviceaccount:staging:billing");
        let why = refused(f.exchange(&f.sign(&other), None).await);
        assert!(why.contains("rule a-dev") && why.contains("rule b-prod") && why.contains("rule c-exact"), "{why}");
    }

    #[tokio::test]
    async fn own_jwt_svids_are_verified_with_the_local_keyring() {
        let f = fixture(300).await;
        let issuer = own_spiffe_issuer(&f.authz);
        assert_eq!(issuer, "https://mandate.example/spiffe");
        let rule = NewFederationRule {
            issuer: issuer.clone(),
            jwks: None,
            subject: "spiffe://mandate.local/agent/".into(),
            subject_match: Some("prefix".into()),
            ..f.rule("own")
        };
        f.add(rule).await;
        let svid_key = f.authz.keys.signer_for(PURPOSE_JWT_SVID, Alg::ES256).unwrap();
        let claims = json!({"iss": issuer, "sub": "spiffe://mandate.local/agent/billing", "aud": "mandate",
            "exp": NOW + 300, "iat": NOW, "jti": "svid-1"});
        let issued = f.exchange(&sign_jwt(&svid_key, "JWT", &claims).unwrap(), None).await.unwrap();
        assert_eq!(claims_of(&issued.access_token)[FEDERATED_CLAIM]["rule"], "own");
        // A token signed by the access-token key is not a JWT-SVID.
        let token_key = f.authz.keys.signer(Alg::ES256).unwrap();
        let mut forged = claims.clone();
        forged["jti"] = json!("svid-2");
        assert!(refused(f.exchange(&sign_jwt(&token_key, "JWT", &forged).unwrap(), None).await).contains("unknown"));
    }

    #[tokio::test]
    async fn rules_are_validated_on_creation() {
        let f = fixture(300).await;
        let invalid = |rule: NewFederationRule| async {
            match registry::create_federation_rule(&f.authz, rule, "t").await {
                Err(registry::RegistryError::Invalid(why)) => why,
                other => panic!("expected a refusal, got {other:?}"),
            }
        };
        let base = f.rule("r");
        let cases = [
            (NewFederationRule { issuer: "http://cluster.example".into(), ..base.clone() }, "https"),
            (NewFederationRule { issuer: "http://127.0.0.1:9".into(), ..base.clone() }, "https"),
            (NewFederationRule { issuer: "not a url".into(), ..base.clone() }, "not a URL"),
            (NewFederationRule { issuer: "https://x.example/?q=1".into(), ..base.clone() }, "query"),
            (NewFederationRule { jwks: None, ..base.clone() }, "exactly one"),
            (NewFederationRule { jwks_url: Some("https://x.example/jwks".into()), ..base.clone() }, "exactly one"),
            (
                NewFederationRule { jwks: None, jwks_url: Some("https://10.0.0.1/jwks".into()), ..base.clone() },
                "private",
            ),
            (NewFederationRule { jwks: None, jwks_url: Some("http://x.example/jwks".into()), ..base.clone() }, "https"),
            (NewFederationRule { jwks: Some("{\"keys\": []}".into()), ..base.clone() }, "inline JWKS"),
            (NewFederationRule { audience: String::new(), ..base.clone() }, "audience"),
            (NewFederationRule { subject: String::new(), ..base.clone() }, "subject"),
            (NewFederationRule { subject_match: Some("regex".into()), ..base.clone() }, "subject_match"),
            (NewFederationRule { max_ttl_secs: Some(29), ..base.clone() }, "max_ttl_secs"),
            (NewFederationRule { max_ttl_secs: Some(3601), ..base.clone() }, "max_ttl_secs"),
            (NewFederationRule { agent: "ghost".into(), ..base.clone() }, "does not exist"),
            (NewFederationRule { name: "bad name!".into(), ..base.clone() }, "name"),
            (NewFederationRule { issuer: own_spiffe_issuer(&f.authz), ..base.clone() }, "own JWT-SVIDs"),
        ];
        for (rule, expected) in cases {
            let why = invalid(rule).await;
            assert!(why.contains(expected), "{expected:?} not in {why:?}");
        }
        for reserved in ["sub", "/aud", "exp"] {
            let claims = BTreeMap::from([(reserved.to_owned(), "x".to_owned())]);
            assert!(invalid(NewFederationRule { claims, ..base.clone() }).await.contains("own fields"));
        }
        let claims = BTreeMap::from([("/a//b".to_owned(), "x".to_owned())]);
        assert!(invalid(NewFederationRule { claims, ..base.clone() }).await.contains("empty segment"));
        assert!(f.authz.store.federation_rules().await.unwrap().is_empty());
        f.add(base.clone()).await;
        assert!(matches!(
            registry::create_federation_rule(&f.authz, base, "t").await,
            Err(registry::RegistryError::Refused(_))
        ));
        registry::delete_federation_rule(&f.authz, "r", "t").await.unwrap();
        assert!(f.authz.store.federation_rules().await.unwrap().is_empty());
    }
}
