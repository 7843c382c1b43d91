//! The seven steps of the demo. Each one does what an agent, Alice or an operator would do, over
//! real HTTP where they would use HTTP, prints the evidence and checks it.

use std::io::BufReader;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_audit::query::QueryParams;
use mandate_authz::ciba::APPROVAL_PATH;
use mandate_authz::registry::{self, NewAgent, NewClient};
use mandate_authz::trust::{self, NewDelegationTarget, NewTrustedIdp};
use mandate_authz::{Authz, federation::NewFederationRule};
use mandate_store::EpochKind;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::check;
use super::services::{MCP_PATH, ORDERS_PATH};
use super::stack::{self, Stack};
use super::web::{Web, audit_events, claim_line, claims, event_line, tool_call};
use super::{Printer, Stop, Tasks};
use crate::config::Settings;

const OWNER: &str = "alice";
const AGENT: &str = "assistant";
/// The agent's client at Mandate (the resource's authorization server).
const CLIENT_ID: &str = "assistant.demo";
/// The federation rule that turns the agent's JWT-SVID into a Mandate token.
const FEDERATION_RULE: &str = "assistant-svid";
const CALLBACK: &str = "http://127.0.0.1/callback";
const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const GRANT_CIBA: &str = "urn:openid:params:grant-type:ciba";

/// The Cedar policy set Mandate's gateway decides calls with (`{resource}` is the gateway).
const POLICY: &str = r#"// Tokens: every grant may issue and exchange (the scopes already bound them).
@id("tokens")
permit (principal, action in [Mandate::Action::"issue", Mandate::Action::"exchange"], resource);

// Alice's agents may call the tools and services behind the gateway ...
@id("alice-agents")
permit (principal in Mandate::Owner::"alice", action == Mandate::Action::"call",
        resource in Mandate::Resource::"{resource}");

// ... but deleting needs the write scope, which a read-only delegation does not carry ...
@id("delete-needs-write")
forbid (principal, action == Mandate::Action::"call", resource == Mandate::Tool::"delete_record")
unless { context.scopes.contains("write") };

// ... and moving money needs Alice's approval, every single time.
@id("transfers-need-approval") @step_up("approval")
forbid (principal, action == Mandate::Action::"call", resource == Mandate::Tool::"transfer_funds")
unless { context.approved };
"#;

/// Credentials and identities the steps share.
struct Cast {
    password: Zeroizing<String>,
    agent_id: String,
    /// The agent's client at the IdP (authorization code flow, ID-JAG requests).
    idp_client: (String, String),
    /// The agent's client at Mandate (ID-JAG redemption, CIBA).
    client: (String, String),
    idp_profile: String,
}

/// What the steps hand on: the delegated token Alice's agent works with.
struct Delegated {
    token: String,
}

pub async fn play(dir: &Path, user: &Settings, tasks: &Tasks, out: &Printer) -> Result<(), Stop> {
    let stack = stack::start(dir, user, tasks).await?;
    let cast = scene(&stack, dir, out).await?;
    let mut web = Web::new()?;
    step_1_workload_identity(&stack, &mut web, out).await?;
    let delegated = step_2_delegation(&stack, &cast, &mut web, out).await?;
    step_3_policy(&stack, &delegated, &mut web, out).await?;
    step_4_approval(&stack, &cast, &delegated, &mut web, out).await?;
    step_5_call_chain(&stack, &cast, &delegated, &mut web, out).await?;
    step_6_kill_switch(&stack, &delegated, &mut web, out).await?;
    step_7_audit(&stack, dir, out).await?;
    Ok(())
}

/// Registers who is who on both servers (each change is an audited registry call, as the CLI
/// and admin API make them) and activates the Cedar policy.
async fn scene(stack: &Stack, dir: &Path, out: &Printer) -> anyhow::Result<Cast> {
    let corr = crate::commands::correlation();
    let password = Zeroizing::new(mandate_crypto::random_token("pw-"));
    let uid = std::fs::metadata(dir).context("reading the demo directory's owner")?.uid();
    let (idp, mandate) = (&stack.idp, &stack.mandate);

    // Alice's identity provider: Alice, and the agent's client there.
    registry::create_owner(idp, OWNER, Some("Alice".into()), &corr).await?;
    mandate_authz::password::set_owner_password(idp, OWNER, password.clone(), &corr).await?;
    let idp_profile = format!("{}/profile", stack.idp_base);
    registry::create_resource(idp, &idp_profile, &["profile".into()], &corr).await?;
    agent(idp, vec!["profile".into()], vec![]).await?;
    let idp_client = client(
        idp,
        NewClient {
            agent: Some(AGENT.into()),
            auth_method: "client_secret_basic".into(),
            redirect_uris: vec![CALLBACK.into()],
            grant_types: vec!["authorization_code".into(), GRANT_TOKEN_EXCHANGE.into()],
            client_name: Some("Alice's assistant".into()),
            ..NewClient::default()
        },
    )
    .await?;

    // Mandate, the resource's authorization server: the same people, the agent attested by uid.
    registry::create_owner(mandate, OWNER, Some("Alice".into()), &corr).await?;
    mandate_authz::password::set_owner_password(mandate, OWNER, password.clone(), &corr).await?;
    registry::create_resource(mandate, &stack.resource, &["read".into(), "write".into()], &corr).await?;
    let agent_id = agent(mandate, vec!["read".into(), "write".into()], vec![format!("unix:uid:{uid}")]).await?;
    let client = client(
        mandate,
        NewClient {
            agent: Some(AGENT.into()),
            auth_method: "client_secret_basic".into(),
            client_id: Some(CLIENT_ID.into()),
            grant_types: vec![GRANT_JWT_BEARER.into(), GRANT_CIBA.into()],
            client_name: Some("Alice's assistant".into()),
            ..NewClient::default()
        },
    )
    .await?;
    let rule = NewFederationRule {
        name: FEDERATION_RULE.into(),
        issuer: mandate_authz::federation::own_spiffe_issuer(mandate),
        audience: stack.base.clone(),
        subject: agent_id.clone(),
        agent: AGENT.into(),
        ..NewFederationRule::default()
    };
    registry::create_federation_rule(mandate, rule, &corr).await?;
    let idp_keys = format!("{}/.well-known/jwks.json", stack.idp_base);
    let trusted = NewTrustedIdp {
        name: "alice-idp".into(),
        issuer: stack.idp_base.clone(),
        jwks_url: Some(idp_keys),
        jwks: None,
    };
    trust::create_trusted_idp(mandate, trusted, &corr).await?;
    // At the IdP: the agent may ask for read-only ID-JAGs for the gateway's resource at Mandate.
    let target = NewDelegationTarget {
        agent: AGENT.into(),
        audience: stack.base.clone(),
        resource: stack.resource.clone(),
        scopes: vec!["read".into()],
        remote_client_id: CLIENT_ID.into(),
    };
    trust::create_delegation_target(idp, target, &corr).await?;
    let policy = POLICY.replace("{resource}", &stack.resource);
    let summary = mandate_authz::policy::replace(mandate, &policy, &corr).await?;

    out.evidence(&format!("Alice's IdP (Mandate):     {}", stack.idp_base));
    out.evidence(&format!("Mandate (resource's AS):   {}", stack.base));
    out.evidence(&format!("Workload API:              unix://{}", stack.socket.display()));
    out.evidence(&format!(
        "gateway (MCP + orders):    {}  (Cedar policies: {})",
        stack.resource,
        summary.ids.join(", ")
    ));
    Ok(Cast { password, agent_id, idp_client, client, idp_profile })
}

async fn agent(authz: &Authz, scopes: Vec<String>, selectors: Vec<String>) -> anyhow::Result<String> {
    let new = NewAgent { name: AGENT.into(), owner: OWNER.into(), scopes, selectors, may_impersonate: false };
    let made = registry::create_agent(authz, new, &crate::commands::correlation()).await?;
    Ok(made.spiffe_id.to_string())
}

async fn client(authz: &Authz, new: NewClient) -> anyhow::Result<(String, String)> {
    let made = registry::create_client(authz, new, &crate::commands::correlation()).await?;
    let secret = made.secret.context("a confidential client has a secret")?;
    Ok((made.client.client_id.to_string(), secret))
}

/// 1. JWT-SVID from the Workload API → RFC 7523 jwt-bearer → a Mandate access token.
async fn step_1_workload_identity(stack: &Stack, web: &mut Web, out: &Printer) -> Result<(), Stop> {
    out.step(1, "An agent gets a workload identity, with no API key");
    let endpoint = format!("unix://{}", stack.socket.display());
    let workload = spiffe::WorkloadApiClient::connect_to(endpoint.clone())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the Workload API at {endpoint}: {e}"))?;
    let svid = workload
        .fetch_jwt_svid([stack.base.as_str()], None)
        .await
        .map_err(|e| anyhow::anyhow!("fetching a JWT-SVID: {e}"))?;
    let svid_claims = claims(svid.token())?;
    let agent_id = stack.mandate.config.trust_domain.agent_id_str(AGENT);
    check::text("JWT-SVID", &svid_claims, "sub", &agent_id)?;
    let attested = last(&stack.mandate, QueryParams { action: Some("workload.attest".into()), ..agent_query() })
        .await?
        .context("no workload.attest event")?;
    out.evidence(&format!(
        "Workload API attested this process by its uid and issued a JWT-SVID: {}",
        claim_line(&svid_claims, &["sub", "aud", "iss"])
    ));
    out.evidence(&event_line(&attested));

    let token_url = format!("{}/oauth2/token", stack.base);
    let form = [
        ("grant_type", GRANT_JWT_BEARER),
        ("assertion", svid.token()),
        ("resource", stack.resource.as_str()),
        ("scope", "read"),
    ];
    let answer = web.oauth(&token_url, None, &form).await?;
    let body = answer.json();
    check::status("jwt-bearer grant with the JWT-SVID", 200, answer.status, &body)?;
    let token = body["access_token"].as_str().context("no access_token")?;
    let access = claims(token)?;
    check::text("access token", &access, "sub", &agent_id)?;
    check::text("access token", &access, "client_id", &format!("federation:{FEDERATION_RULE}"))?;
    out.evidence(&format!(
        "POST /oauth2/token grant_type=jwt-bearer, no client_id, no client secret -> {}",
        answer.status
    ));
    out.evidence(&format!("access token: {}", claim_line(&access, &["sub", "client_id", "aud", "scope"])));
    out.evidence(&issuance(&stack.mandate, &access).await?);
    Ok(())
}

/// 2. Alice signs in at her IdP; the IdP issues an ID-JAG for her to the agent; Mandate
///    redeems it for a read-only token that names Alice as subject and the agent as actor.
async fn step_2_delegation(stack: &Stack, cast: &Cast, web: &mut Web, out: &Printer) -> Result<Delegated, Stop> {
    out.step(2, "Alice delegates read-only access to the agent (ID-JAG)");
    let id_token = sign_in(stack, cast, web).await?;
    let id_claims = claims(&id_token)?;
    check::text("ID token", &id_claims, "sub", OWNER)?;
    out.evidence(&format!(
        "Alice signed in at her IdP (password form, consent): ID token {}",
        claim_line(&id_claims, &["iss", "sub", "aud"])
    ));

    let form = [
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("requested_token_type", "urn:ietf:params:oauth:token-type:id-jag"),
        ("subject_token", id_token.as_str()),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:id_token"),
        ("audience", stack.base.as_str()),
        ("resource", stack.resource.as_str()),
        ("scope", "read"),
    ];
    let idp_client = (cast.idp_client.0.as_str(), cast.idp_client.1.as_str());
    let answer = web.oauth(&format!("{}/oauth2/token", stack.idp_base), Some(idp_client), &form).await?;
    let body = answer.json();
    check::status("ID-JAG request at the IdP", 200, answer.status, &body)?;
    let id_jag = body["access_token"].as_str().context("no ID-JAG")?.to_owned();
    let jag = claims(&id_jag)?;
    check::text("ID-JAG", &jag, "sub", OWNER)?;
    check::text("ID-JAG", &jag, "aud", &stack.base)?;
    let idp_event = issuance(&stack.idp, &jag).await?;
    out.evidence(&format!(
        "IdP issued an ID-JAG -> {}: {}",
        answer.status,
        claim_line(&jag, &["iss", "sub", "aud", "act", "scope"])
    ));

    out.evidence(&format!("at the IdP: {idp_event}"));
    let form = [("grant_type", GRANT_JWT_BEARER), ("assertion", id_jag.as_str())];
    let client = (cast.client.0.as_str(), cast.client.1.as_str());
    let answer = web.oauth(&format!("{}/oauth2/token", stack.base), Some(client), &form).await?;
    let body = answer.json();
    check::status("ID-JAG redemption at Mandate", 200, answer.status, &body)?;
    let token = body["access_token"].as_str().context("no access_token")?.to_owned();
    let access = claims(&token)?;
    check::text("delegated token", &access, "sub", OWNER)?;
    check::text("delegated token", &access, "scope", "read")?;
    check::equal("delegated token: act.sub", cast.agent_id.as_str(), &check::shown(&access["act"]["sub"]))?;
    out.evidence(&format!(
        "Mandate redeemed it -> {}: {}",
        answer.status,
        claim_line(&access, &["sub", "act", "scope", "aud", "mandate_idp"])
    ));
    out.evidence(&issuance(&stack.mandate, &access).await?);
    Ok(Delegated { token })
}

/// The authorization code flow at the IdP as Alice's browser runs it; returns her ID token.
async fn sign_in(stack: &Stack, cast: &Cast, web: &mut Web) -> anyhow::Result<String> {
    let verifier = mandate_crypto::random_token("pkce-");
    let challenge = URL_SAFE_NO_PAD.encode(mandate_crypto::sha256(verifier.as_bytes()));
    let query = [
        ("response_type", "code"),
        ("client_id", cast.idp_client.0.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("resource", cast.idp_profile.as_str()),
        ("scope", "openid profile"),
        ("state", "demo"),
    ];
    let authorize = reqwest::Url::parse_with_params(&format!("{}/oauth2/authorize", stack.idp_base), query)?;
    let page = web.get(authorize.as_str()).await?;
    anyhow::ensure!(page.status == 200, "the sign-in page answered {}", page.status);
    let decision = format!("{}/oauth2/authorize/decision", stack.idp_base);
    let (request_id, csrf) = (page.field("request_id")?, page.field("csrf")?);
    let login = [
        ("request_id", request_id.as_str()),
        ("csrf", csrf.as_str()),
        ("owner", OWNER),
        ("password", cast.password.as_str()),
        ("decision", "login"),
    ];
    let consent = web.submit(&decision, &stack.idp_base, &login).await?;
    anyhow::ensure!(consent.status == 200, "signing in answered {}", consent.status);
    let (request_id, csrf) = (consent.field("request_id")?, consent.field("csrf")?);
    let approve = [("request_id", request_id.as_str()), ("csrf", csrf.as_str()), ("decision", "approve")];
    let redirect = web.submit(&decision, &stack.idp_base, &approve).await?;
    let code =
        redirect.redirect_param("code").with_context(|| format!("no code in the redirect ({})", redirect.status))?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("redirect_uri", CALLBACK),
    ];
    let idp_client = (cast.idp_client.0.as_str(), cast.idp_client.1.as_str());
    let answer = web.oauth(&format!("{}/oauth2/token", stack.idp_base), Some(idp_client), &form).await?;
    let body = answer.json();
    anyhow::ensure!(answer.status == 200, "the code redemption answered {} {body}", answer.status);
    Ok(body["id_token"].as_str().context("no id_token")?.to_owned())
}

/// 3. The read-only delegation reads, and cannot delete.
async fn step_3_policy(stack: &Stack, delegated: &Delegated, web: &mut Web, out: &Printer) -> Result<(), Stop> {
    out.step(3, "The gateway lets the agent read and refuses a delete (Cedar policy)");
    let mcp = format!("{}{MCP_PATH}", stack.resource);
    let read = web.call(&mcp, &delegated.token, &tool_call("read_record", json!({"id": 7}))).await?;
    let body = read.json();
    check::status("read_record through the gateway", 200, read.status, &body)?;
    let text = check::shown(&body["result"]["content"][0]["text"]);
    let seen = &body["result"]["txn"];
    check::text("the tools server's Txn-Token", seen, "sub", OWNER)?;
    out.evidence(&format!(
        "read_record -> {} \"{text}\" (the tools server's Txn-Token: sub={} act={})",
        read.status,
        check::shown(&seen["sub"]),
        check::shown(&seen["act"]["sub"])
    ));

    let delete = web.call(&mcp, &delegated.token, &tool_call("delete_record", json!({"id": 7}))).await?;
    let body = delete.json();
    check::status("delete_record through the gateway", 403, delete.status, &body)?;
    check::text("delete_record refusal", &body, "error", "policy_denied")?;
    out.evidence(&format!(
        "delete_record -> {} {}: {}",
        delete.status,
        check::shown(&body["error"]),
        check::shown(&body["error_description"])
    ));
    let denied = last(&stack.mandate, QueryParams { action: Some("gateway.deny".into()), ..agent_query() })
        .await?
        .context("no gateway.deny event")?;
    check::holds(
        "gateway.deny event",
        check::shown(&denied["detail"]).contains("delete-needs-write"),
        "detail naming delete-needs-write",
        &denied,
    )?;
    out.evidence(&event_line(&denied));
    Ok(())
}

/// 4. A transfer needs Alice's approval: CIBA, her decision on Mandate's page, a one-call token.
async fn step_4_approval(
    stack: &Stack,
    cast: &Cast,
    delegated: &Delegated,
    web: &mut Web,
    out: &Printer,
) -> Result<(), Stop> {
    out.step(4, "A transfer needs Alice's approval (CIBA), and the approval is good for one call");
    let mcp = format!("{}{MCP_PATH}", stack.resource);
    let transfer = tool_call("transfer_funds", json!({"amount": 250, "to": "acct-42"}));
    let asked = web.call(&mcp, &delegated.token, &transfer).await?;
    let required = asked.json();
    check::status("transfer_funds without approval", 403, asked.status, &required)?;
    check::text("transfer_funds refusal", &required, "error", "approval_required")?;
    out.evidence(&format!(
        "transfer_funds -> {} approval_required: \"{}\"",
        asked.status,
        check::shown(&required["binding_message"])
    ));

    let details = required["authorization_details"].to_string();
    let form = [
        ("scope", required["scope"].as_str().unwrap_or_default()),
        ("resource", required["resource"].as_str().unwrap_or_default()),
        ("login_hint", OWNER),
        ("binding_message", required["binding_message"].as_str().unwrap_or_default()),
        ("authorization_details", details.as_str()),
    ];
    let endpoint = required["backchannel_authentication_endpoint"].as_str().context("no CIBA endpoint named")?;
    let client = (cast.client.0.as_str(), cast.client.1.as_str());
    let started = web.oauth(endpoint, Some(client), &form).await?;
    let body = started.json();
    check::status("CIBA backchannel authentication request", 200, started.status, &body)?;
    let auth_req_id = body["auth_req_id"].as_str().context("no auth_req_id")?.to_owned();
    out.evidence(&format!(
        "agent -> POST /oauth2/bc-authorize login_hint=alice -> {} (auth_req_id issued)",
        started.status
    ));

    // Alice finds the request (what `mandate ciba pending alice` lists) and approves it on
    // Mandate's own page with her password, as her browser would post the form.
    let pending =
        mandate_authz::ciba::pending(&stack.mandate, OWNER).await.map_err(|e| anyhow::anyhow!("{}", e.description))?;
    let message = required["binding_message"].as_str().unwrap_or_default();
    let (_, approval_url) = pending
        .iter()
        .find(|(request, _)| request.binding_message == message)
        .context("no pending approval for alice with this binding message")?;
    let page = web.get(approval_url).await?;
    check::status("the approval page", 200, page.status, &Value::Null)?;
    check::holds(
        "the approval page",
        page.body.contains(message),
        "the binding message on the page",
        "a page without it",
    )?;
    let decision = [("owner", OWNER), ("password", cast.password.as_str()), ("decision", "approve")];
    let approved = web.submit(approval_url, &stack.base, &decision).await?;
    check::status("Alice's approval", 200, approved.status, &Value::Null)?;
    let approve_event = last(&stack.mandate, QueryParams { action: Some("ciba.approve".into()), ..Default::default() })
        .await?
        .context("no ciba.approve event")?;
    out.evidence(&format!(
        "Alice opened Mandate's approval page (GET {APPROVAL_PATH}{}… -> {}) and approved with her password -> {}",
        approval_url.rsplit('/').next().unwrap_or_default().chars().take(8).collect::<String>(),
        page.status,
        approved.status
    ));
    out.evidence(&event_line(&approve_event));

    let form = [("grant_type", GRANT_CIBA), ("auth_req_id", auth_req_id.as_str())];
    let answer = web.oauth(&format!("{}/oauth2/token", stack.base), Some(client), &form).await?;
    let body = answer.json();
    check::status("CIBA token request", 200, answer.status, &body)?;
    let one_call = body["access_token"].as_str().context("no access_token")?.to_owned();
    let approval = claims(&one_call)?;
    check::text("approval token", &approval, "sub", OWNER)?;
    check::equal(
        "approval token: tool",
        "transfer_funds",
        &check::shown(&approval["authorization_details"][0]["tool"]),
    )?;
    out.evidence(&format!(
        "agent polled the token endpoint -> {}: {} tool={}",
        answer.status,
        claim_line(&approval, &["sub", "act", "scope"]),
        check::shown(&approval["authorization_details"][0]["tool"])
    ));

    let done = web.call(&mcp, &one_call, &transfer).await?;
    let body = done.json();
    check::status("transfer_funds with the approval", 200, done.status, &body)?;
    out.evidence(&format!(
        "transfer_funds with the approval token -> {} \"{}\"",
        done.status,
        check::shown(&body["result"]["content"][0]["text"])
    ));
    let forwarded = last(&stack.mandate, QueryParams { action: Some("gateway.forward".into()), ..agent_query() })
        .await?
        .context("no gateway.forward event")?;
    let detail = check::shown(&forwarded["detail"]);
    check::holds(
        "the approved call's gateway.forward event",
        detail.contains("approved=true"),
        "approved=true",
        &detail,
    )?;
    out.evidence(&event_line(&forwarded));
    let again = web.call(&mcp, &one_call, &transfer).await?;
    let body = again.json();
    check::status("the same approval used twice", 403, again.status, &body)?;
    check::text("the second use", &body, "error", "invalid_approval")?;
    out.evidence(&format!(
        "the same call again -> {} invalid_approval: {}",
        again.status,
        check::shown(&body["error_description"])
    ));
    Ok(())
}

/// 5. One Txn-Token through order → risk → payment; the audit log finds the whole chain by `txn`.
async fn step_5_call_chain(
    stack: &Stack,
    cast: &Cast,
    delegated: &Delegated,
    web: &mut Web,
    out: &Printer,
) -> Result<(), Stop> {
    out.step(5, "A Txn-Token carries who and for whom through three internal hops");
    let orders = format!("{}{ORDERS_PATH}", stack.resource);
    let answer = web.call(&orders, &delegated.token, &json!({"item": "book", "amount": 12})).await?;
    let body = answer.json();
    check::status("POST /orders through the gateway", 200, answer.status, &body)?;
    let hops = body["hops"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = hops.iter().map(|hop| check::shown(&hop["service"])).collect();
    check::equal("the hops that answered", "order risk payment", &names.join(" "))?;
    let txn = check::shown(&hops[0]["txn"]);
    out.evidence(&format!("POST /orders through the gateway -> {}", answer.status));
    for hop in &hops {
        check::text("a hop's Txn-Token", hop, "txn", &txn)?;
        out.evidence(&format!(
            "  {:<8} txn={} sub={} act={}",
            check::shown(&hop["service"]),
            check::shown(&hop["txn"]),
            check::shown(&hop["sub"]),
            check::shown(&hop["act"]["sub"])
        ));
    }
    let payment = &hops[2];
    check::text("payment's Txn-Token", payment, "sub", OWNER)?;
    check::equal("payment's Txn-Token: act.sub", cast.agent_id.as_str(), &check::shown(&payment["act"]["sub"]))?;
    let chain = audit_events(&stack.mandate, QueryParams { txn: Some(txn.clone()), ..Default::default() }).await?;
    check::holds("audit query --txn", !chain.is_empty(), "at least one event with this txn", "none")?;
    out.evidence(&format!("mandate audit query --txn {txn}:"));
    for event in &chain {
        out.evidence(&format!("  {}", event_line(event)));
    }
    Ok(())
}

/// 6. The kill switch on the agent: its delegated token stops working at once.
async fn step_6_kill_switch(stack: &Stack, delegated: &Delegated, web: &mut Web, out: &Printer) -> Result<(), Stop> {
    out.step(6, "Alice pulls the kill switch on the agent");
    let corr = crate::commands::correlation();
    let epoch = mandate_authz::revoke::revoke_subject(&stack.mandate, EpochKind::Agent, AGENT, &corr)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code.as_str(), e.description))?;
    let revoked = last(&stack.mandate, QueryParams { action: Some("revoke".into()), ..agent_query() })
        .await?
        .context("no revocation event")?;
    out.evidence(&format!("mandate revoke --agent {AGENT}: every token issued to it until {epoch} is dead"));
    out.evidence(&event_line(&revoked));
    let mcp = format!("{}{MCP_PATH}", stack.resource);
    let refused = web.call(&mcp, &delegated.token, &tool_call("read_record", json!({"id": 7}))).await?;
    check::status("read_record after the kill switch", 401, refused.status, &refused.json())?;
    out.evidence(&format!(
        "read_record with the same token -> {} (WWW-Authenticate: {})",
        refused.status,
        refused.www_authenticate.as_deref().unwrap_or("-")
    ));
    let refusal = last(&stack.mandate, QueryParams { action: Some("gateway.".into()), ..Default::default() })
        .await?
        .context("no gateway event")?;
    check::text("the gateway's last event", &refusal, "decision", "deny")?;
    out.evidence(&event_line(&refusal));
    Ok(())
}

/// 7. Export the audit log and verify it offline with the independent verifier.
async fn step_7_audit(stack: &Stack, dir: &Path, out: &Printer) -> Result<(), Stop> {
    out.step(7, "The audit log is exported and verified offline");
    let path = dir.join("audit-export.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).context("creating the export file")?);
    let exported = mandate_audit::export(&stack.mandate.log, &mut file).await.context("exporting the audit log")?;
    std::io::Write::flush(&mut file).context("writing the export file")?;
    drop(file);
    let key_text = stack.mandate.log.signer().verifier_key();
    let key = mandate_audit_verify::VerifierKey::from_str(&key_text).context("the log's verifier key")?;
    let reader = BufReader::new(std::fs::File::open(&path).context("opening the export")?);
    let report = mandate_audit_verify::verify_export(reader, &key)
        .map_err(|e| anyhow::anyhow!("the export does not verify: {e}"))?;
    let last_checkpoint = final_checkpoint(&path, &key)?;
    check::equal("verified entries", &exported, &report.entries)?;
    check::equal("final checkpoint size", &report.entries, &last_checkpoint.size)?;
    out.evidence(&format!("mandate audit export -> {} ({exported} events)", path.display()));
    out.evidence(&format!(
        "mandate-audit-verify: {} events chained, {} signed checkpoint(s), final checkpoint size {}: verified",
        report.entries, report.checkpoints, last_checkpoint.size
    ));
    out.evidence(&format!("verifier key: {key_text}"));
    Ok(())
}

/// The export's last line: the fresh checkpoint, whose signature is checked again here.
fn final_checkpoint(
    path: &Path,
    key: &mandate_audit_verify::VerifierKey,
) -> anyhow::Result<mandate_audit_verify::Checkpoint> {
    let text = std::fs::read_to_string(path).context("reading the export")?;
    let line = text.lines().last().context("an empty export")?;
    let value: Value = serde_json::from_str(line).context("the export's last line")?;
    let note = value["checkpoint"].as_str().context("the export does not end with a checkpoint")?;
    mandate_audit_verify::verify_note(note, key).map_err(|e| anyhow::anyhow!("the final checkpoint: {e}"))
}

/// The `token.issue` event of a token, found by its `jti`.
async fn issuance(authz: &Authz, token_claims: &Value) -> anyhow::Result<String> {
    let jti = token_claims["jti"].as_str().context("a token without jti")?;
    let events = audit_events(authz, QueryParams { jti: Some(jti.to_owned()), ..Default::default() }).await?;
    let issued = events.iter().find(|e| e["action"] == "token.issue").context("no token.issue event for the token")?;
    Ok(event_line(issued))
}

/// The last event matching `params`.
async fn last(authz: &Authz, params: QueryParams) -> anyhow::Result<Option<Value>> {
    Ok(audit_events(authz, params).await?.pop())
}

fn agent_query() -> QueryParams {
    QueryParams { agent: Some(AGENT.into()), ..Default::default() }
}
