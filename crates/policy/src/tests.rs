//! Unit tests: schema, loading and validation, decisions (tools, arguments, budgets, step-up,
//! issuance, owner hierarchy), bounds, files, and sliced-vs-full equivalence.

use std::sync::OnceLock;

use cedar_policy::{Request, Schema};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::request::{Scope, context, flatten_arguments};
use crate::schema::{names, schema};
use crate::*;

const MCP: &str = "https://mcp.example/";
const BOT: &str = "spiffe://example.org/agent/bot";
const HELPER: &str = "spiffe://example.org/agent/helper";

const POLICIES: &str = r#"
@id("read-tools")
permit (
  principal in Mandate::Owner::"alice",
  action == Mandate::Action::"call",
  resource in Mandate::Resource::"https://mcp.example/"
) when { context.tool like "read_*" };

@id("bot-tools")
permit (
  principal == Mandate::Agent::"spiffe://example.org/agent/bot",
  action == Mandate::Action::"call",
  resource in Mandate::Resource::"https://mcp.example/"
);

@id("no-delete")
forbid (principal, action == Mandate::Action::"call", resource == Mandate::Tool::"delete_file");

@id("no-drop-table")
forbid (principal, action == Mandate::Action::"call", resource)
when { context.arguments like "*DROP TABLE*" };

@id("no-drop-table-any-case")
forbid (principal, action == Mandate::Action::"call", resource)
when { context.arguments_lower like "*drop table*" };

@id("no-rm-rf")
forbid (principal, action == Mandate::Action::"call", resource)
when { context.argument_values.contains("rm -rf /") };

@id("tool-budget")
forbid (principal, action == Mandate::Action::"call", resource is Mandate::Tool)
when { context.tool_calls >= 300 };

@id("approve-payments")
@step_up("approval")
forbid (principal, action == Mandate::Action::"call", resource == Mandate::Tool::"pay")
unless { context.approved };

@id("approve-big-spend")
@step_up("approval")
forbid (principal, action == Mandate::Action::"call", resource)
when { context.spend > 1000 } unless { context.approved };

@id("no-secrets")
forbid (principal, action == Mandate::Action::"call", resource)
when { context.findings.contains("aws_access_key") };

@id("issue-read-write")
permit (
  principal is Mandate::Agent in Mandate::Owner::"alice",
  action == Mandate::Action::"issue",
  resource == Mandate::Resource::"https://mcp.example/"
) when {
  ["read", "write"].containsAll(context.scopes) &&
  context.grant_type == "client_credentials"
};

@id("exchange-for-alice")
permit (principal, action == Mandate::Action::"exchange", resource)
when { context.subject == "alice" && !context.scopes.contains("admin") };
"#;

fn no_strings() -> &'static [String] {
    &[]
}

fn call<'a>(agent: &'a str, tool: &'a str, arguments: Option<&'a Value>) -> PolicyRequest<'a> {
    PolicyRequest {
        action: Action::Call,
        agent: Some(agent),
        client_id: "bot-client",
        owner: Some("alice"),
        subject: Some("alice"),
        resource: MCP,
        tool: Some(tool),
        scopes: no_strings(),
        grant_type: "",
        mcp_method: Some("tools/call"),
        http_method: "POST",
        path: "/mcp",
        arguments,
        counters: Counters::default(),
        findings: no_strings(),
        approved: false,
    }
}

fn issue<'a>(agent: &'a str, owner: &'a str, scopes: &'a [String]) -> PolicyRequest<'a> {
    PolicyRequest {
        action: Action::Issue,
        agent: Some(agent),
        client_id: "bot-client",
        owner: Some(owner),
        subject: None,
        resource: MCP,
        tool: None,
        scopes,
        grant_type: "client_credentials",
        mcp_method: None,
        http_method: "",
        path: "",
        arguments: None,
        counters: Counters::default(),
        findings: no_strings(),
        approved: false,
    }
}

fn engine() -> PolicyEngine {
    let engine = PolicyEngine::empty();
    engine.replace(POLICIES).expect("test policies are valid");
    engine
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn invalid_message(result: Result<PolicySummary, PolicyError>) -> String {
    match result {
        Err(PolicyError::Invalid(message)) => message,
        other => panic!("expected PolicyError::Invalid, got {other:?}"),
    }
}

// ---- schema ----

#[test]
fn schema_parses_and_names_its_types() {
    let (parsed, _) = Schema::from_cedarschema_str(SCHEMA).expect("schema parses");
    let types: Vec<String> = parsed.entity_types().map(|t| t.to_string()).collect();
    for expected in ["Mandate::Owner", "Mandate::Agent", "Mandate::Client", "Mandate::Resource", "Mandate::Tool"] {
        assert!(types.contains(&expected.to_owned()), "{expected} missing");
    }
    let actions: Vec<String> = parsed.actions().map(|a| a.to_string()).collect();
    assert_eq!(actions.len(), 3, "{actions:?}");
}

#[test]
fn schema_has_no_action_groups() {
    // The slicer treats `action in [..]` as membership in the list; action groups would need
    // action entities in the evaluation and in the slicer.
    assert_eq!(schema().action_groups().count(), 0);
}

#[test]
fn built_requests_conform_to_the_schema() {
    let arguments = json!({"sql": "select 1", "n": 3, "nested": {"list": ["a", true, null]}});
    let scopes = strings(&["read"]);
    let mut requests = vec![call(BOT, "read_file", Some(&arguments)), issue(BOT, "alice", &scopes)];
    let mut exchange = issue(BOT, "alice", &scopes);
    exchange.action = Action::Exchange;
    requests.push(exchange);
    let mut client_call = call(BOT, "x", None);
    client_call.agent = None;
    client_call.owner = None;
    client_call.tool = None;
    requests.push(client_call);
    for request in &requests {
        let scope = Scope::of(request);
        scope.entities().expect("entities build");
        let built = Request::new(
            scope.principal,
            scope.action,
            scope.resource,
            context(request, false).expect("context builds"),
            Some(schema()),
        );
        assert!(built.is_ok(), "{:?}: {:?}", request.action, built.err());
    }
}

// ---- loading and validation ----

#[test]
fn valid_set_loads_with_ids_in_source_order() {
    let summary = validate(POLICIES).expect("valid");
    assert_eq!(summary.policies, 12);
    assert_eq!(summary.ids.first().map(String::as_str), Some("read-tools"));
    assert_eq!(summary.ids.last().map(String::as_str), Some("exchange-for-alice"));
    let engine = PolicyEngine::empty();
    assert!(!engine.is_active());
    engine.replace(POLICIES).expect("valid");
    assert!(engine.is_active());
    assert_eq!(engine.policy_ids(), summary.ids);
    assert_eq!(engine.source().as_deref(), Some(POLICIES));
}

#[test]
fn policies_without_id_get_generated_ids() {
    let summary = validate(
        "permit(principal, action, resource);\n@id(\"named\") forbid(principal, action, resource) when { context.calls > 5 };",
    )
    .expect("valid");
    assert_eq!(summary.ids, vec!["policy0".to_owned(), "named".to_owned()]);
}

#[test]
fn syntax_error_is_rejected_with_location() {
    let message = invalid_message(validate("permit(principal, action, resource)\nwhen { context.calls > };"));
    assert!(message.contains("parse error"), "{message}");
    assert!(message.contains("<policy>:2:"), "{message}");
}

#[test]
fn schema_violations_are_rejected_with_the_validators_message() {
    let cases = [
        ("unknown attribute", r#"@id("p") permit(principal, action, resource) when { context.nope == "x" };"#, "nope"),
        ("wrong type", r#"@id("p") permit(principal, action, resource) when { context.calls like "x*" };"#, "p"),
        (
            "unknown entity type",
            r#"@id("p") permit(principal == Mandate::User::"bob", action, resource);"#,
            "Mandate::User",
        ),
        ("unknown action", r#"@id("p") permit(principal, action == Mandate::Action::"delete", resource);"#, "delete"),
        ("always-false condition", r#"@id("p") permit(principal, action, resource) when { false };"#, "impossible"),
        (
            "tool resource for issuance",
            r#"@id("p") permit(principal, action == Mandate::Action::"issue", resource == Mandate::Tool::"x");"#,
            "p",
        ),
    ];
    for (what, source, needle) in cases {
        let message = invalid_message(validate(source));
        assert!(message.contains("schema validation failed"), "{what}: {message}");
        assert!(message.contains(needle), "{what}: {message}");
        assert!(message.contains("<policy>:1:"), "{what}: location missing in {message}");
    }
}

#[test]
fn rejected_replacement_keeps_the_previous_set() {
    let engine = engine();
    let read = call(HELPER, "read_file", None);
    let before = engine.decide(&read);
    assert!(before.allowed);
    for bad in [
        "permit(principal, action, resource",
        r#"permit(principal, action, resource) when { context.nope };"#,
        r#"@id("a") permit(principal, action, resource); @id("a") forbid(principal, action, resource);"#,
    ] {
        assert!(engine.replace(bad).is_err(), "{bad}");
        assert_eq!(engine.decide(&read), before);
        assert_eq!(engine.source().as_deref(), Some(POLICIES));
    }
}

#[test]
fn mandate_rules_on_ids_and_annotations() {
    let cases = [
        (
            "duplicate @id",
            r#"@id("a") permit(principal, action, resource); @id("a") forbid(principal, action, resource);"#,
            "a",
        ),
        (
            "@id colliding with a generated id",
            r#"permit(principal, action, resource); @id("policy0") forbid(principal, action, resource);"#,
            "policy0",
        ),
        ("empty @id", r#"@id("") permit(principal, action, resource);"#, "1 to 128"),
        ("bad @id characters", r#"@id("a b") permit(principal, action, resource);"#, "ASCII"),
        ("unknown step-up kind", r#"@id("s") @step_up("mfa") forbid(principal, action, resource);"#, "mfa"),
        (
            "step-up on a permit",
            r#"@id("s") @step_up("approval") permit(principal, action, resource);"#,
            "only to forbid",
        ),
        ("template", r#"@id("t") permit(principal == ?principal, action, resource);"#, "templates"),
    ];
    for (what, source, needle) in cases {
        let message = invalid_message(validate(source));
        assert!(message.contains(needle), "{what}: {message}");
    }
}

#[test]
fn oversized_policy_text_is_rejected() {
    let one = "permit(principal, action, resource) when { context.calls > 1 };\n";
    let source = one.repeat(load::MAX_SOURCE_BYTES / one.len() + 1);
    let message = invalid_message(validate(&source));
    assert!(message.contains("limit"), "{message}");
}

// ---- decisions ----

#[test]
fn read_tool_permitted_and_delete_tool_forbidden() {
    let engine = engine();
    let read = engine.decide(&call(HELPER, "read_file", None));
    assert!(read.allowed);
    assert_eq!(read.policy_ids, vec!["read-tools"]);

    // bot is permitted every tool, but the forbid wins.
    let delete = engine.decide(&call(BOT, "delete_file", None));
    assert!(!delete.allowed);
    assert_eq!(delete.policy_ids, vec!["no-delete"]);
    assert!(!delete.step_up);

    // helper has no permit for write tools: default deny, no ids.
    let write = engine.decide(&call(HELPER, "write_file", None));
    assert!(!write.allowed);
    assert!(write.policy_ids.is_empty());
    assert!(write.errors.is_empty());
}

#[test]
fn drop_table_in_arguments_is_forbidden() {
    let engine = engine();
    let bad = json!({"query": "DROP TABLE users"});
    let decision = engine.decide(&call(BOT, "sql", Some(&bad)));
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, vec!["no-drop-table", "no-drop-table-any-case"]);

    let lower = json!({"query": "drop table users"});
    let decision = engine.decide(&call(BOT, "sql", Some(&lower)));
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, vec!["no-drop-table-any-case"]);

    let fine = json!({"query": "select * from users"});
    assert!(engine.decide(&call(BOT, "sql", Some(&fine))).allowed);
}

#[test]
fn argument_values_are_exposed_as_a_set() {
    let engine = engine();
    let bad = json!({"cmd": {"argv": ["sh", "-c", "rm -rf /"]}});
    let decision = engine.decide(&call(BOT, "shell", Some(&bad)));
    assert_eq!(decision.policy_ids, vec!["no-rm-rf"]);
    // The value must match as a whole string, not as a substring.
    let fine = json!({"cmd": "rm -rf /tmp/x"});
    assert!(engine.decide(&call(BOT, "shell", Some(&fine))).allowed);
}

#[test]
fn tool_budget_forbids_from_the_300th_call() {
    let engine = engine();
    let mut request = call(BOT, "search", None);
    request.counters.tool_calls = 299;
    assert!(engine.decide(&request).allowed);
    request.counters.tool_calls = 300;
    let decision = engine.decide(&request);
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, vec!["tool-budget"]);
}

#[test]
fn findings_forbid() {
    let engine = engine();
    let findings = strings(&["email", "aws_access_key"]);
    let mut request = call(BOT, "search", None);
    request.findings = &findings;
    assert_eq!(engine.decide(&request).policy_ids, vec!["no-secrets"]);
}

#[test]
fn step_up_only_when_approval_would_allow() {
    let engine = engine();
    // Denied only by the step-up forbid, and bot is permitted otherwise: ask for approval.
    let pay = call(BOT, "pay", None);
    let decision = engine.decide(&pay);
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, vec!["approve-payments"]);
    assert!(decision.step_up);

    // With the approval it passes.
    let mut approved = pay.clone();
    approved.approved = true;
    let decision = engine.decide(&approved);
    assert!(decision.allowed);
    assert!(!decision.step_up);

    // A step-up forbid together with an ordinary forbid: refuse outright.
    let mut over_budget = pay.clone();
    over_budget.counters.tool_calls = 300;
    let decision = engine.decide(&over_budget);
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, vec!["tool-budget", "approve-payments"]);
    assert!(!decision.step_up);

    // Two step-up forbids, both lifted by approval.
    let mut big = pay.clone();
    big.counters.spend = 5000;
    let decision = engine.decide(&big);
    assert_eq!(decision.policy_ids, vec!["approve-payments", "approve-big-spend"]);
    assert!(decision.step_up);

    // Step-up forbid but no permit would apply (helper may only read): approval cannot help.
    let decision = engine.decide(&call(HELPER, "pay", None));
    assert!(!decision.allowed);
    assert_eq!(decision.policy_ids, vec!["approve-payments"]);
    assert!(!decision.step_up);
}

/// Step-up forbids that do or do not read `approved`, and permits that do: the approval re-check
/// only re-evaluates policies reading `approved`, so each of its paths is compared with the
/// reference evaluation over the whole set.
const STEP_UP_VARIANTS: &str = r#"
@id("pay-needs-approval") @step_up("approval")
forbid (principal, action == Mandate::Action::"call", resource == Mandate::Tool::"pay")
unless { context.approved };

@id("pay-cap-even-approved") @step_up("approval")
forbid (principal, action == Mandate::Action::"call", resource == Mandate::Tool::"pay")
unless { context.approved && context.spend < 500 };

@id("wire-step-up-without-approved") @step_up("approval")
forbid (principal, action == Mandate::Action::"call", resource == Mandate::Tool::"wire")
when { context.spend > 100 };

@id("wire-needs-approval") @step_up("approval")
forbid (principal, action == Mandate::Action::"call", resource == Mandate::Tool::"wire")
unless { context.approved };

@id("bot-pays-and-wires")
permit (principal == Mandate::Agent::"spiffe://example.org/agent/bot", action, resource);

@id("helper-only-when-approved")
permit (principal == Mandate::Agent::"spiffe://example.org/agent/helper", action, resource)
when { context.approved && context.tool == "pay" };
"#;

#[test]
fn approval_recheck_follows_the_policies_reading_approved() {
    let engine = PolicyEngine::empty();
    engine.replace(STEP_UP_VARIANTS).expect("valid");
    let decide = |agent: &'static str, tool: &'static str, spend: i64| {
        let mut request = call(agent, tool, None);
        request.counters.spend = spend;
        let decision = engine.decide(&request);
        assert_eq!(decision, engine.decide_unsliced(&request), "{agent} {tool} {spend}");
        decision
    };
    // A permit that does not read `approved` (bot) is what an approval would leave applying.
    let small = decide(BOT, "pay", 10);
    assert_eq!(small.policy_ids, vec!["pay-needs-approval", "pay-cap-even-approved"]);
    assert!(small.step_up);
    // A forbid reading `approved` that still applies with an approval: no point asking.
    let big = decide(BOT, "pay", 900);
    assert_eq!(big.policy_ids, vec!["pay-needs-approval", "pay-cap-even-approved"]);
    assert!(!big.step_up);
    // The only permit for helper reads `approved`: the approval itself makes it apply.
    let helper = decide(HELPER, "pay", 10);
    assert!(!helper.allowed);
    assert!(helper.step_up);
    // ... but not for another tool, where no permit would apply (default deny with approval).
    let helper_wire = decide(HELPER, "wire", 10);
    assert_eq!(helper_wire.policy_ids, vec!["wire-needs-approval"]);
    assert!(!helper_wire.step_up);
    // A step-up forbid that does not read `approved` applies whatever the approval.
    let wire = decide(BOT, "wire", 200);
    assert_eq!(wire.policy_ids, vec!["wire-step-up-without-approved", "wire-needs-approval"]);
    assert!(!wire.step_up);
    let small_wire = decide(BOT, "wire", 10);
    assert_eq!(small_wire.policy_ids, vec!["wire-needs-approval"]);
    assert!(small_wire.step_up);
}

#[test]
fn sliced_policies_are_evaluated_without_their_heads() {
    // Every kept policy's head is true for its scope, so the slice holds it with an
    // unconstrained head, the same id, effect and conditions, and no annotations.
    let engine = engine();
    let slice = engine.slice_for_tests(Scope::of(&call(BOT, "pay", None))).expect("slice");
    let mut ids = Vec::new();
    for policy in slice.policies.policies() {
        ids.push(policy.id().to_string());
        assert_eq!(policy.principal_constraint(), cedar_policy::PrincipalConstraint::Any);
        assert_eq!(policy.action_constraint(), cedar_policy::ActionConstraint::Any);
        assert_eq!(policy.resource_constraint(), cedar_policy::ResourceConstraint::Any);
    }
    assert!(ids.contains(&"approve-payments".to_owned()), "{ids:?}");
    let approve = slice.policies.policy(&cedar_policy::PolicyId::new("approve-payments")).expect("kept");
    assert_eq!(approve.annotation("step_up"), None);
    assert_eq!(approve.effect(), cedar_policy::Effect::Forbid);
    assert!(approve.to_string().contains("unless"), "{approve}");
    // Policies for other principals, actions or tools are not in the slice.
    assert!(!ids.contains(&"issue-read-write".to_owned()));
    assert!(!ids.contains(&"no-delete".to_owned()));
    // The slice has a step-up forbid, so it carries the approval re-check: the forbids reading
    // `approved` and, apart, the permits that do not.
    let check = slice.approval.as_ref().expect("approval check");
    let reading: Vec<String> = check.reading_approved.policies().map(|p| p.id().to_string()).collect();
    assert_eq!(reading, vec!["approve-payments", "approve-big-spend"]);
    let permits: Vec<String> = check.other_permits.policies().map(|p| p.id().to_string()).collect();
    assert_eq!(permits, vec!["read-tools", "bot-tools"]);
    // A scope without step-up forbids has no re-check.
    let issue_slice = engine.slice_for_tests(Scope::of(&issue(BOT, "alice", &[]))).expect("slice");
    assert!(issue_slice.approval.is_none());
}

#[test]
fn issuance_is_limited_by_scopes_and_grant_type() {
    let engine = engine();
    let read = strings(&["read"]);
    let admin = strings(&["read", "admin"]);
    let decision = engine.decide(&issue(BOT, "alice", &read));
    assert!(decision.allowed);
    assert_eq!(decision.policy_ids, vec!["issue-read-write"]);
    assert!(!engine.decide(&issue(BOT, "alice", &admin)).allowed);
    let mut code_grant = issue(BOT, "alice", &read);
    code_grant.grant_type = "authorization_code";
    assert!(!engine.decide(&code_grant).allowed);
    // A client without an agent is not `is Mandate::Agent`.
    let mut client = issue(BOT, "alice", &read);
    client.agent = None;
    assert!(!engine.decide(&client).allowed);
}

#[test]
fn owner_hierarchy_applies_to_agents() {
    let engine = engine();
    let read = strings(&["read"]);
    assert!(engine.decide(&issue(HELPER, "alice", &read)).allowed);
    assert!(!engine.decide(&issue(HELPER, "mallory", &read)).allowed);
    let mut ownerless = call(HELPER, "read_file", None);
    ownerless.owner = None;
    assert!(!engine.decide(&ownerless).allowed);
    let mut other_owner = call(HELPER, "read_file", None);
    other_owner.owner = Some("bob");
    assert!(!engine.decide(&other_owner).allowed);
}

#[test]
fn exchange_uses_subject_and_scopes() {
    let engine = engine();
    let read = strings(&["read"]);
    let admin = strings(&["admin"]);
    let mut exchange = issue(BOT, "bob", &read);
    exchange.action = Action::Exchange;
    exchange.grant_type = "urn:ietf:params:oauth:grant-type:token-exchange";
    exchange.subject = Some("alice");
    assert_eq!(engine.decide(&exchange).policy_ids, vec!["exchange-for-alice"]);
    exchange.subject = Some("carol");
    assert!(!engine.decide(&exchange).allowed);
    exchange.subject = Some("alice");
    exchange.scopes = &admin;
    assert!(!engine.decide(&exchange).allowed);
}

#[test]
fn empty_engine_denies_by_default() {
    let decision = PolicyEngine::empty().decide(&call(BOT, "read_file", None));
    assert!(!decision.allowed);
    assert!(decision.policy_ids.is_empty());
    assert_eq!(decision.policies_for_audit(), "default-deny");
}

#[test]
fn evaluation_errors_never_allow() {
    let engine = PolicyEngine::empty();
    engine
        .replace(
            r#"@id("overflow") permit(principal, action, resource) when { context.spend + 9223372036854775807 > 0 };"#,
        )
        .expect("valid");
    let mut request = call(BOT, "x", None);
    request.counters.spend = 1;
    let decision = engine.decide(&request);
    assert!(!decision.allowed);
    assert_eq!(decision.errors.len(), 1, "{decision:?}");
    assert!(decision.errors[0].contains("overflow"), "{decision:?}");
    request.counters.spend = 0;
    assert!(engine.decide(&request).allowed);
}

// ---- arguments ----

#[test]
fn arguments_are_canonical() {
    let a: Value = serde_json::from_str(r#"{"b": [1, "x"], "a": {"d": null, "c": true}}"#).expect("json");
    let flat = flatten_arguments(&a).expect("within bounds");
    assert_eq!(flat.canonical, r#"{"a":{"c":true,"d":null},"b":[1,"x"]}"#);
    assert_eq!(flat.values, vec!["x".to_owned()]);
    let quoted = flatten_arguments(&json!({"q": "say \"hi\"\n"})).expect("ok");
    assert_eq!(quoted.canonical, r#"{"q":"say \"hi\"\n"}"#);
}

#[test]
fn oversized_arguments_deny_with_an_error() {
    let engine = engine();
    let many = Value::Array((0..=request::MAX_ARGUMENT_VALUES).map(|i| json!(i.to_string())).collect());
    let large = json!({"blob": "x".repeat(request::MAX_ARGUMENTS_BYTES)});
    let mut deep = json!("leaf");
    for _ in 0..=request::MAX_ARGUMENTS_DEPTH {
        deep = json!([deep]);
    }
    for (what, arguments) in [("values", many), ("bytes", large), ("depth", deep)] {
        let decision = engine.decide(&call(BOT, "search", Some(&arguments)));
        assert!(!decision.allowed, "{what}");
        assert_eq!(decision.errors.len(), 1, "{what}");
        assert!(decision.policy_ids.is_empty(), "{what}");
    }
    // Just within the bounds: bot may call the tool.
    let ok = json!({"blob": "x".repeat(1000)});
    assert!(engine.decide(&call(BOT, "search", Some(&ok))).allowed);
}

// ---- files ----

#[test]
fn directory_loads_cedar_files_in_name_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("10-permit.cedar"), r#"@id("all") permit(principal, action, resource);"#)
        .expect("write");
    std::fs::write(
        dir.path().join("20-forbid.cedar"),
        r#"@id("no-delete") forbid(principal, action, resource == Mandate::Tool::"delete_file");"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("README.md"), "not a policy").expect("write");
    let engine = PolicyEngine::empty();
    let summary = engine.load_file(dir.path()).expect("loads");
    assert_eq!(summary.ids, vec!["all".to_owned(), "no-delete".to_owned()]);
    assert!(!engine.decide(&call(BOT, "delete_file", None)).allowed);
    // The active text can be submitted again as is.
    let source = engine.source().expect("active");
    assert!(source.contains("// file: 20-forbid.cedar"));
    assert_eq!(validate(&source).expect("valid").ids, summary.ids);
}

#[test]
fn file_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.cedar"), "permit(principal, action, resource);\n").expect("write");
    std::fs::write(
        dir.path().join("b.cedar"),
        "// second file\n@id(\"x\") permit(principal, action, resource) when { context.nope };\n",
    )
    .expect("write");
    let engine = PolicyEngine::empty();
    let message = invalid_message(engine.load_file(dir.path()));
    assert!(message.contains("b.cedar:2:"), "{message}");
    assert!(!engine.is_active());
    assert!(matches!(engine.load_file(&dir.path().join("missing.cedar")), Err(PolicyError::Io { .. })));
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(invalid_message(engine.load_file(empty.path())).contains("no *.cedar"));
}

// ---- slicing ----

#[test]
fn slices_are_cached_per_scope_and_cleared_on_replace() {
    let engine = engine();
    engine.decide(&call(BOT, "search", None));
    engine.decide(&call(BOT, "search", None));
    assert_eq!(engine.cached_slices(), 1);
    engine.decide(&call(BOT, "read_file", None));
    assert_eq!(engine.cached_slices(), 2);
    engine.replace(POLICIES).expect("valid");
    assert_eq!(engine.cached_slices(), 0);
}

#[test]
fn slice_keeps_only_matching_heads() {
    let engine = engine();
    let compiled_ids = engine.policy_ids();
    let slice = engine.slice_for_tests(Scope::of(&issue(BOT, "alice", &[]))).expect("slice");
    let ids: Vec<String> = slice.policies.policies().map(|p| p.id().to_string()).collect();
    assert_eq!(ids, vec!["issue-read-write".to_owned()]);
    assert_eq!(compiled_ids.len(), 12);
    let _ = names();
}

#[test]
fn context_use_is_read_from_the_policy() {
    use crate::request::{CONTEXT_ATTRIBUTES, ContextUse};
    let bit = |name: &str| CONTEXT_ATTRIBUTES.iter().position(|n| *n == name).expect("attribute");
    let used = |source: &str| {
        let policy = cedar_policy::Policy::parse(None, source).expect("parses");
        ContextUse::of_policy(&policy)
    };
    let tool_only = used(r#"permit(principal, action, resource) when { context["tool"] == "x" };"#);
    assert_ne!(tool_only, ContextUse::ALL);
    assert_eq!(
        tool_only,
        ContextUse::NONE.union(used(r#"permit(principal, action, resource) when { context.tool like "*" };"#))
    );
    let two = used(r#"permit(principal, action, resource) when { context has calls && context.spend > 1 };"#);
    assert_ne!(two, ContextUse::ALL);
    assert_ne!(two, tool_only);
    assert_eq!(used("permit(principal, action, resource);"), ContextUse::NONE);
    // The whole record compared: every attribute must be present.
    assert_eq!(used(r#"permit(principal, action, resource) when { context == {} };"#), ContextUse::ALL);
    let _ = bit("tool");
}

#[test]
fn pruned_context_decides_like_the_full_record() {
    // A slice reading only `tool` gets a context without the other attributes; a policy that
    // uses the whole record gets all of them.
    let engine = PolicyEngine::empty();
    engine
        .replace(
            r#"@id("tool") permit(principal, action, resource) when { context.tool == "read_file" };
@id("whole") forbid(principal, action, resource == Mandate::Tool::"write_file") when { context == context && context.calls == 0 };"#,
        )
        .expect("valid");
    for tool in ["read_file", "write_file", "other"] {
        let request = call(BOT, tool, None);
        assert_eq!(engine.decide(&request), engine.decide_unsliced(&request), "{tool}");
    }
    assert!(engine.decide(&call(BOT, "read_file", None)).allowed);
}

/// Pools for the generated equivalence set.
const AGENTS: [&str; 6] = ["a0", "a1", "a2", "a3", "a4", "a5"];
const OWNERS: [&str; 3] = ["alice", "bob", "carol"];
const CLIENTS: [&str; 3] = ["c0", "c1", "c2"];
const RESOURCES: [&str; 3] = ["https://r0/", "https://r1/", "https://r2/"];
const TOOLS: [&str; 5] = ["read", "write", "delete", "pay", "search"];
const SCOPES: [&str; 3] = ["read", "write", "admin"];

/// A small deterministic generator (splitmix64) so each seed gives one policy set.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 200 policies with every kind of head and a mix of conditions, including one that can
/// overflow (so errors are compared too).
fn generated_policies(seed: u64) -> String {
    let mut rng = Rng(seed);
    let mut out = String::new();
    for i in 0..200 {
        let principal = match rng.below(7) {
            0 => "principal".to_owned(),
            1 => format!("principal == Mandate::Agent::\"{}\"", rng.pick(&AGENTS)),
            2 => format!("principal in Mandate::Owner::\"{}\"", rng.pick(&OWNERS)),
            3 => "principal is Mandate::Agent".to_owned(),
            4 => "principal is Mandate::Client".to_owned(),
            5 => format!("principal is Mandate::Client in Mandate::Owner::\"{}\"", rng.pick(&OWNERS)),
            _ => format!("principal == Mandate::Client::\"{}\"", rng.pick(&CLIENTS)),
        };
        let tool_resource = rng.below(2) == 0;
        let (action, resource) = if tool_resource {
            let resource = match rng.below(3) {
                0 => format!("resource == Mandate::Tool::\"{}\"", rng.pick(&TOOLS)),
                1 => "resource is Mandate::Tool".to_owned(),
                _ => format!("resource is Mandate::Tool in Mandate::Resource::\"{}\"", rng.pick(&RESOURCES)),
            };
            ("action == Mandate::Action::\"call\"".to_owned(), resource)
        } else {
            let action = match rng.below(4) {
                0 => "action".to_owned(),
                1 => "action in [Mandate::Action::\"issue\", Mandate::Action::\"exchange\"]".to_owned(),
                2 => "action == Mandate::Action::\"call\"".to_owned(),
                _ => "action == Mandate::Action::\"issue\"".to_owned(),
            };
            let resource = match rng.below(4) {
                0 => "resource".to_owned(),
                1 => format!("resource == Mandate::Resource::\"{}\"", rng.pick(&RESOURCES)),
                2 => format!("resource in Mandate::Resource::\"{}\"", rng.pick(&RESOURCES)),
                _ => "resource is Mandate::Resource".to_owned(),
            };
            (action, resource)
        };
        let forbid = rng.below(4) == 0;
        let condition = match rng.below(if forbid { 6 } else { 8 }) {
            0 => format!(" when {{ context.tool_calls >= {} }}", 200 + rng.below(200)),
            1 => " when { context.arguments_lower like \"*drop*\" }".to_owned(),
            2 => format!(" when {{ context.scopes.contains(\"{}\") }}", rng.pick(&SCOPES)),
            3 => " unless { context.approved }".to_owned(),
            4 => " when { context.spend + 9223372036854775806 > 0 }".to_owned(),
            5 => format!(" when {{ context.tool == \"{}\" }}", rng.pick(&TOOLS)),
            6 => String::new(),
            _ => format!(" when {{ context.subject == \"{}\" }}", rng.pick(&OWNERS)),
        };
        // Every tenth policy reads `approved` in another way: a forbid that still applies with
        // an approval (spend 2), a permit that needs one.
        let condition = match (i % 10, forbid) {
            (9, true) => " unless { context.approved && context.spend < 2 }".to_owned(),
            (9, false) => " when { context.approved }".to_owned(),
            _ => condition,
        };
        // Step-up forbids: those reading `approved`, and half the budget forbids, which do not.
        let step_up = forbid && (condition.contains("approved") || (condition.contains("tool_calls") && i % 2 == 0));
        out.push_str(&format!(
            "@id(\"p{i}\"){}\n{} ({principal}, {action}, {resource}){condition};\n",
            if step_up { " @step_up(\"approval\")" } else { "" },
            if forbid { "forbid" } else { "permit" },
        ));
    }
    out
}

fn generated_engines() -> &'static Vec<PolicyEngine> {
    static ENGINES: OnceLock<Vec<PolicyEngine>> = OnceLock::new();
    ENGINES.get_or_init(|| {
        (0..3)
            .map(|seed| {
                let engine = PolicyEngine::empty();
                engine.replace(&generated_policies(seed)).expect("generated set is valid");
                engine
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
struct RandomRequest {
    set: usize,
    action: usize,
    agent: Option<usize>,
    client: usize,
    owner: Option<usize>,
    resource: usize,
    tool: Option<usize>,
    scopes: Vec<usize>,
    tool_calls: i64,
    spend: i64,
    drop: bool,
    approved: bool,
    subject: usize,
}

fn random_request() -> impl Strategy<Value = RandomRequest> {
    (
        (0..3usize, 0..3usize, proptest::option::of(0..AGENTS.len()), 0..CLIENTS.len()),
        (proptest::option::of(0..OWNERS.len()), 0..RESOURCES.len(), proptest::option::of(0..TOOLS.len())),
        (proptest::collection::vec(0..SCOPES.len(), 0..3), 0..400i64, 0..3i64),
        (any::<bool>(), any::<bool>(), 0..OWNERS.len()),
    )
        .prop_map(
            |(
                (set, action, agent, client),
                (owner, resource, tool),
                (scopes, tool_calls, spend),
                (drop, approved, subject),
            )| {
                RandomRequest {
                    set,
                    action,
                    agent,
                    client,
                    owner,
                    resource,
                    tool,
                    scopes,
                    tool_calls,
                    spend,
                    drop,
                    approved,
                    subject,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]
    #[test]
    fn sliced_decisions_equal_full_set_decisions(r in random_request()) {
        let engine = &generated_engines()[r.set];
        let scopes: Vec<String> = r.scopes.iter().map(|i| SCOPES[*i].to_owned()).collect();
        let arguments = if r.drop { json!({"q": "Drop Table x"}) } else { json!({"q": "select"}) };
        let request = PolicyRequest {
            action: [Action::Issue, Action::Exchange, Action::Call][r.action],
            agent: r.agent.map(|i| AGENTS[i]),
            client_id: CLIENTS[r.client],
            owner: r.owner.map(|i| OWNERS[i]),
            subject: Some(OWNERS[r.subject]),
            resource: RESOURCES[r.resource],
            tool: r.tool.map(|i| TOOLS[i]),
            scopes: &scopes,
            grant_type: "client_credentials",
            mcp_method: Some("tools/call"),
            http_method: "POST",
            path: "/mcp",
            arguments: Some(&arguments),
            counters: Counters { calls: 0, tool_calls: r.tool_calls, spend: r.spend, repeats: 0 },
            findings: &[],
            approved: r.approved,
        };
        let sliced = engine.decide(&request);
        let full = engine.decide_unsliced(&request);
        prop_assert_eq!(sliced, full);
    }
}

#[test]
fn generated_sets_exercise_every_outcome() {
    // Guards the equivalence test against a generator that only ever produces one outcome.
    let mut counts = [0usize; 5]; // allowed, denied by policy, default deny, errors, step-up
    let mut rng = Rng(99);
    for engine in generated_engines() {
        for _ in 0..600 {
            let arguments = json!({"q": if rng.below(2) == 0 { "drop" } else { "select" }});
            let mut request = call(rng.pick(&AGENTS), rng.pick(&TOOLS), Some(&arguments));
            request.owner = Some(rng.pick(&OWNERS));
            request.resource = rng.pick(&RESOURCES);
            request.subject = Some(rng.pick(&OWNERS));
            request.counters.tool_calls = rng.below(400) as i64;
            request.counters.spend = rng.below(3) as i64;
            request.approved = rng.below(2) == 0;
            let decision = engine.decide(&request);
            let slot = match (decision.allowed, decision.policy_ids.is_empty()) {
                (true, _) => 0,
                (false, false) => 1,
                (false, true) => 2,
            };
            counts[slot] += 1;
            counts[3] += usize::from(!decision.errors.is_empty());
            counts[4] += usize::from(decision.step_up);
        }
    }
    assert!(counts.iter().all(|c| *c > 0), "allowed, denied, default deny, errors, step-up: {counts:?}");
}
