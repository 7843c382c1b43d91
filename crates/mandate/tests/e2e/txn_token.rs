//! The Transaction Token Service against the real binary: workloads of the trust domain (a
//! JWT-SVID from `mandate agent svid --jwt`, or an agent's client) trade an agent's access token
//! for a Txn-Token at the token endpoint; refusals one by one; replacement; and
//! `mandate audit query --txn` finding the issuance.

use serde_json::{Value, json};

use crate::harness::{Server, claims, header};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TXN_TOKEN: &str = "urn:ietf:params:oauth:token-type:txn_token";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TD: &str = "mandate.local";
const ASSISTANT: &str = "spiffe://mandate.local/agent/assistant";
const GATEWAY: &str = "spiffe://mandate.local/agent/gateway";

/// A server with agent `assistant` (scope read; its client's access token) and agent `gateway`
/// whose JWT-SVIDs authenticate it as a workload.
struct Chain {
    server: Server,
    client: (String, String),
    access_token: String,
}

impl Chain {
    async fn start(env: &[(&str, &str)]) -> Self {
        let server = Server::start_in(tempfile::tempdir().unwrap(), env);
        let client = server.agent_with_client("assistant", "client_secret_basic");
        server.cli(&["agent", "create", "gateway", "--owner", "alice", "--scope", "read"]);
        let access_token = server.token(&client.0, &client.1).await;
        Self { server, client, access_token }
    }

    /// A fresh JWT-SVID of agent `gateway` addressed to the server.
    fn svid(&self) -> String {
        let out = self.server.cli_json(&["agent", "svid", "gateway", "--jwt", "--audience", &self.server.base]);
        out["token"].as_str().unwrap().to_owned()
    }

    /// The token request's form: a Txn-Token for `subject` of `kind`, audience the trust domain.
    fn form(&self, subject: &str, kind: &str) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", TOKEN_EXCHANGE.into()),
            ("requested_token_type", TXN_TOKEN.into()),
            ("audience", TD.into()),
            ("subject_token", subject.into()),
            ("subject_token_type", kind.into()),
        ]
    }

    /// Authenticated by a fresh JWT-SVID.
    async fn as_workload(&self, mut form: Vec<(&'static str, String)>) -> (u16, Value) {
        form.push(("client_assertion_type", JWT_BEARER.into()));
        form.push(("client_assertion", self.svid()));
        self.post(self.server.http.post(self.server.url("/oauth2/token")).form(&form)).await
    }

    async fn post(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A Txn-Token minted for the assistant's access token, with `extra` parameters.
    async fn mint(&self, extra: &[(&'static str, &str)]) -> Value {
        let mut form = self.form(&self.access_token, ACCESS_TOKEN);
        form.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let (status, body) = self.as_workload(form).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn refused(answer: &(u16, Value), status: u16, code: &str, needle: &str) {
    let (got, body) = answer;
    assert_eq!((*got, body["error"].as_str()), (status, Some(code)), "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(description.contains(needle), "{needle:?} not in {description:?}");
}

#[tokio::test]
async fn a_jwt_svid_workload_mints_a_txn_token_that_audit_query_finds() {
    let chain = Chain::start(&[]).await;
    let context = r#"{"req_ip":"127.0.0.1"}"#;
    let details = r#"{"method":"tools/call","tool":"search"}"#;
    let body = chain.mint(&[("scope", "read"), ("request_context", context), ("request_details", details)]).await;
    assert_eq!((body["token_type"].as_str(), body["issued_token_type"].as_str()), (Some("N_A"), Some(TXN_TOKEN)));
    assert_eq!(body["expires_in"], 60);
    assert!(body.get("refresh_token").is_none());
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(header(token)["typ"], "txntoken+jwt");
    let claims = claims(token);
    assert_eq!((claims["aud"].as_str(), claims["iss"].as_str()), (Some(TD), Some(chain.server.base.as_str())));
    assert_eq!((claims["sub"].as_str(), claims["act"].clone()), (Some(ASSISTANT), json!({"sub": ASSISTANT})));
    assert_eq!((claims["req_wl"].as_str(), claims["scope"].as_str()), (Some(GATEWAY), Some("read")));
    assert_eq!(claims["tctx"], json!({"method": "tools/call", "tool": "search"}));
    assert_eq!(claims["rctx"], json!({"req_ip": "127.0.0.1"}));
    assert!(!token.contains(&chain.access_token) && !claims.to_string().contains(&chain.access_token));
    let txn = claims["txn"].as_str().unwrap();

    let found = chain.server.cli(&["--json", "audit", "query", "--txn", txn]);
    let events: Vec<Value> = found.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1, "{found}");
    let event = &events[0];
    assert_eq!((event["action"].as_str(), event["decision"].as_str()), (Some("txn_token.issue"), Some("allow")));
    assert_eq!((event["txn"].as_str(), event["subject"].as_str()), (Some(txn), Some(ASSISTANT)));
    assert_eq!((event["agent"].as_str(), event["owner"].as_str()), (Some(ASSISTANT), Some("alice")));
    assert_eq!(event["detail"].as_str(), Some(format!("req_wl={GATEWAY}").as_str()));
    // The same event by agent and owner, and in the human form.
    let by_agent = chain.server.cli(&["--json", "audit", "query", "--agent", "assistant", "--owner", "alice"]);
    assert!(by_agent.lines().any(|l| l.contains(txn)), "{by_agent}");
    let human = chain.server.cli(&["audit", "query", "--txn", txn]);
    assert!(human.contains("txn_token.issue allow") && human.contains(txn), "{human}");
    let none = chain.server.cli(&["audit", "query", "--txn", "no-such-txn"]);
    assert!(none.trim().is_empty(), "{none}");
    assert!(!chain.server.cli_raw(&["audit", "query"]).status.success(), "a filter is required");
    // The export still verifies with the new member in every event.
    assert!(chain.server.audit_events().iter().all(|e| e.get("txn").is_some()));
}

#[tokio::test]
async fn an_agent_client_is_a_workload_too() {
    let chain = Chain::start(&[]).await;
    let request =
        chain.server.http.post(chain.server.url("/oauth2/token")).basic_auth(&chain.client.0, Some(&chain.client.1));
    let (status, body) = chain.post(request.form(&chain.form(&chain.access_token, ACCESS_TOKEN))).await;
    assert_eq!(status, 200, "{body}");
    let claims = claims(body["access_token"].as_str().unwrap());
    assert_eq!((claims["req_wl"].as_str(), claims["sub"].as_str()), (Some(ASSISTANT), Some(ASSISTANT)));
}

#[tokio::test]
async fn an_unauthenticated_caller_is_refused() {
    let chain = Chain::start(&[]).await;
    let request = chain.server.http.post(chain.server.url("/oauth2/token"));
    let answer = chain.post(request.form(&chain.form(&chain.access_token, ACCESS_TOKEN))).await;
    refused(&answer, 401, "invalid_client", "");
    let events = chain.server.audit_events();
    let last = events.iter().rfind(|e| e["action"] == "txn_token.issue").unwrap();
    assert_eq!((last["decision"].as_str(), last["reason"].as_str()), (Some("deny"), Some("invalid_client")));
}

#[tokio::test]
async fn a_foreign_trust_domain_audience_is_invalid_target() {
    let chain = Chain::start(&[]).await;
    let mut form = chain.form(&chain.access_token, ACCESS_TOKEN);
    form[2].1 = "other.example".into();
    refused(&chain.as_workload(form).await, 400, "invalid_target", "trust domain");
}

#[tokio::test]
async fn a_wider_scope_is_refused() {
    let chain = Chain::start(&[]).await;
    let mut form = chain.form(&chain.access_token, ACCESS_TOKEN);
    form.push(("scope", "read write".into()));
    refused(&chain.as_workload(form).await, 400, "invalid_scope", "write");
}

#[tokio::test]
async fn a_revoked_subject_token_is_refused() {
    // Expired subject tokens are refused the same way (unit-tested with a manual clock; access
    // tokens live at least 30 s, too long to wait for here).
    let chain = Chain::start(&[]).await;
    let revoke = chain.server.http.post(chain.server.url("/oauth2/revoke")).bearer_auth(&chain.server.admin);
    let response = revoke.form(&[("token", chain.access_token.as_str())]).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer = chain.as_workload(chain.form(&chain.access_token, ACCESS_TOKEN)).await;
    refused(&answer, 400, "invalid_request", "not acceptable");
}

#[tokio::test]
async fn a_refresh_token_is_not_a_subject() {
    let chain = Chain::start(&[]).await;
    let answer = chain.as_workload(chain.form("some-refresh-token", REFRESH_TOKEN)).await;
    refused(&answer, 400, "invalid_request", "refresh token");
}

#[tokio::test]
async fn request_details_must_be_a_json_object() {
    let chain = Chain::start(&[]).await;
    let mut form = chain.form(&chain.access_token, ACCESS_TOKEN);
    form.push(("request_details", "[1,2,3]".into()));
    refused(&chain.as_workload(form).await, 400, "invalid_request", "request_details must be a JSON object");
}

#[tokio::test]
async fn a_replacement_keeps_the_transaction_and_only_narrows() {
    let chain = Chain::start(&[]).await;
    let first = chain.mint(&[("request_details", r#"{"tool":"search"}"#)]).await;
    let first_token = first["access_token"].as_str().unwrap();
    let old = claims(first_token);
    // Same scope, an added context member: accepted, same txn, sub and act.
    let mut form = chain.form(first_token, TXN_TOKEN);
    form.push(("request_details", r#"{"hop":"risk"}"#.into()));
    let (status, body) = chain.as_workload(form).await;
    assert_eq!(status, 200, "{body}");
    let new = claims(body["access_token"].as_str().unwrap());
    assert_eq!((&new["txn"], &new["sub"], &new["act"]), (&old["txn"], &old["sub"], &old["act"]));
    assert_eq!(new["tctx"], json!({"tool": "search", "hop": "risk"}));
    assert_eq!(new["mandate_replacements"], 1);
    // Widening the scope, or changing a context member, is refused.
    let mut wider = chain.form(first_token, TXN_TOKEN);
    wider.push(("scope", "read write".into()));
    refused(&chain.as_workload(wider).await, 400, "invalid_scope", "write");
    let mut changed = chain.form(first_token, TXN_TOKEN);
    changed.push(("request_details", r#"{"tool":"delete"}"#.into()));
    refused(&chain.as_workload(changed).await, 400, "invalid_request", "would change");
    // Both hops' events carry the one txn.
    let found = chain.server.cli(&["--json", "audit", "query", "--txn", old["txn"].as_str().unwrap()]);
    assert_eq!(found.lines().count(), 4, "{found}");
}

#[tokio::test]
async fn an_expired_txn_token_is_not_replaced() {
    let chain = Chain::start(&[("MANDATE_TXN_TOKEN_TTL_SECS", "1")]).await;
    let first = chain.mint(&[]).await;
    assert_eq!(first["expires_in"], 1);
    // Past its exp (whole seconds, no leeway at the token service).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let answer = chain.as_workload(chain.form(first["access_token"].as_str().unwrap(), TXN_TOKEN)).await;
    refused(&answer, 400, "invalid_request", "expired");
}
