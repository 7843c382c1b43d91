//! Policy decision latency (issue 7 target: p99 < 50 µs with 200 policies for a resource).
//!
//! Generates 200 realistic policies for one resource and times `PolicyEngine::decide` (sliced,
//! cached) against plain Cedar `Authorizer::is_authorized` over the full set with the same
//! request and entities, then the worst case for slicing: 200 policies whose heads all match.

use std::hint::black_box;
use std::str::FromStr;
use std::time::Instant;

use cedar_policy::{Authorizer, Decision as CedarDecision, PolicySet};
use mandate_policy::request::to_cedar;
use mandate_policy::{Action, Counters, PolicyEngine, PolicyRequest};
use serde_json::{Value, json};

const RESOURCE: &str = "https://mcp.example.com/";
const AGENTS: usize = 100;
const OWNERS: usize = 10;
const TOOLS: usize = 40;
/// Distinct requests cycled through (agents x tools x argument/counter variants).
const DISTINCT: usize = 4000;

/// splitmix64: deterministic, so every run measures the same policies and requests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn agent(i: usize) -> String {
    format!("spiffe://example.org/agent/a{i:03}")
}
fn owner_of(agent: usize) -> String {
    format!("owner{}", agent % OWNERS)
}
/// Tools 0..10 are `read_*`, 10..30 ordinary, 30..35 `pay_*`, 35..40 `admin_*`.
fn tool(i: usize) -> String {
    match i {
        0..10 => format!("read_{i}"),
        10..30 => format!("tool_{i}"),
        30..35 => format!("pay_{i}"),
        _ => format!("admin_{i}"),
    }
}

/// The realistic set: per-agent tool permits, owner-scoped permits, argument forbids, budget
/// forbids, step-up forbids and issuance limits, all for one resource.
fn realistic_policies() -> String {
    let mut rng = Rng(7);
    let mut out = String::new();
    let call = "action == Mandate::Action::\"call\"";
    let res = format!("Mandate::Resource::\"{RESOURCE}\"");
    // 80 per-agent permits on tools.
    for i in 0..80 {
        let (a, t) = (rng.below(AGENTS), rng.below(30));
        out += &format!(
            "@id(\"agent-tool-{i}\")\npermit (principal == Mandate::Agent::\"{}\", {call}, resource == Mandate::Tool::\"{}\")\nwhen {{ context.calls < 10000 }};\n",
            agent(a),
            tool(t)
        );
    }
    // 30 owner-scoped permits.
    for i in 0..30 {
        let o = i % OWNERS;
        let condition = match i / OWNERS {
            0 => "context.tool like \"read_*\"".to_owned(),
            1 => format!("context.scopes.contains(\"tools:{o}\")"),
            _ => "context.mcp_method == \"tools/call\" && context.http_method == \"POST\"".to_owned(),
        };
        out += &format!(
            "@id(\"owner-{i}\")\npermit (principal in Mandate::Owner::\"owner{o}\", {call}, resource in {res})\nwhen {{ {condition} }};\n"
        );
    }
    // 40 forbids with argument conditions.
    let patterns = ["*drop table*", "*rm -rf*", "*/etc/passwd*", "*delete from*", "*; shutdown*"];
    for i in 0..40 {
        let t = rng.below(TOOLS);
        let condition = if i % 4 == 3 {
            "context.argument_values.contains(\"../../\")".to_owned()
        } else {
            format!("context.arguments_lower like \"{}\"", patterns[i % patterns.len()])
        };
        out += &format!(
            "@id(\"args-{i}\")\nforbid (principal, {call}, resource == Mandate::Tool::\"{}\")\nwhen {{ {condition} }};\n",
            tool(t)
        );
    }
    // 20 budget forbids.
    for i in 0..20 {
        let line = if i < OWNERS {
            format!(
                "forbid (principal in Mandate::Owner::\"owner{i}\", {call}, resource is Mandate::Tool in {res})\nwhen {{ context.tool_calls >= 300 }};"
            )
        } else {
            format!(
                "forbid (principal, {call}, resource == Mandate::Tool::\"{}\")\nwhen {{ context.calls >= 1000 || context.repeats > 20 }};",
                tool(10 + i)
            )
        };
        out += &format!("@id(\"budget-{i}\")\n{line}\n");
    }
    // 15 step-up forbids.
    for i in 0..15 {
        let line = if i < 5 {
            format!(
                "forbid (principal, {call}, resource == Mandate::Tool::\"{}\")\nwhen {{ context.spend > 100 }} unless {{ context.approved }};",
                tool(30 + i)
            )
        } else {
            format!(
                "forbid (principal == Mandate::Agent::\"{}\", {call}, resource == Mandate::Tool::\"{}\")\nunless {{ context.approved }};",
                agent(rng.below(AGENTS)),
                tool(35 + i % 5)
            )
        };
        out += &format!("@id(\"step-up-{i}\") @step_up(\"approval\")\n{line}\n");
    }
    // 15 issuance limits.
    for i in 0..15 {
        let line = if i < OWNERS {
            format!(
                "permit (principal in Mandate::Owner::\"owner{i}\", action == Mandate::Action::\"issue\", resource == {res})\nwhen {{ [\"read\", \"write\", \"tools:{i}\"].containsAll(context.scopes) && context.grant_type == \"client_credentials\" }};"
            )
        } else {
            format!(
                "forbid (principal is Mandate::Client, action in [Mandate::Action::\"issue\", Mandate::Action::\"exchange\"], resource == {res})\nwhen {{ context.scopes.contains(\"admin{i}\") }};"
            )
        };
        out += &format!("@id(\"issue-{i}\")\n{line}\n");
    }
    out
}

/// 200 policies that all apply to every call on the resource (conditions only on context):
/// slicing cannot remove any of them.
fn all_matching_policies() -> String {
    let mut out = String::new();
    for i in 0..200 {
        let (effect, condition) = match i % 4 {
            0 => ("permit", format!("context.tool == \"{}\"", tool(i % TOOLS))),
            1 => (
                "forbid",
                format!("context.tool == \"{}\" && context.arguments_lower like \"*drop table*\"", tool(i % TOOLS)),
            ),
            2 => ("forbid", format!("context.tool_calls >= {}", 300 + i)),
            _ => ("permit", format!("context.scopes.contains(\"tools:{i}\")")),
        };
        out += &format!(
            "@id(\"all-{i}\")\n{effect} (principal, action == Mandate::Action::\"call\", resource in Mandate::Resource::\"{RESOURCE}\")\nwhen {{ {condition} }};\n"
        );
    }
    out
}

struct Spec {
    agent: String,
    owner: String,
    tool: String,
    arguments: Value,
    scopes: Vec<String>,
    counters: Counters,
    approved: bool,
}

fn specs() -> Vec<Spec> {
    let mut rng = Rng(42);
    let texts = ["select * from users", "DROP TABLE users", "read ../../etc", "hello", "rm -rf /tmp/x"];
    (0..DISTINCT)
        .map(|_| {
            let a = rng.below(AGENTS);
            let text = texts[rng.below(texts.len())];
            Spec {
                agent: agent(a),
                owner: owner_of(a),
                tool: tool(rng.below(TOOLS)),
                arguments: json!({"query": text, "limit": 10, "path": if rng.below(8) == 0 { "../../" } else { "/data" }}),
                scopes: vec!["read".to_owned(), format!("tools:{}", rng.below(OWNERS))],
                counters: Counters {
                    calls: rng.below(1200) as i64,
                    tool_calls: rng.below(400) as i64,
                    spend: rng.below(200) as i64,
                    repeats: rng.below(25) as i64,
                },
                approved: rng.below(4) == 0,
            }
        })
        .collect()
}

fn request(spec: &Spec) -> PolicyRequest<'_> {
    PolicyRequest {
        action: Action::Call,
        agent: Some(&spec.agent),
        client_id: "client-1",
        owner: Some(&spec.owner),
        subject: Some("alice"),
        resource: RESOURCE,
        tool: Some(&spec.tool),
        scopes: &spec.scopes,
        grant_type: "",
        mcp_method: Some("tools/call"),
        http_method: "POST",
        path: "/mcp",
        arguments: Some(&spec.arguments),
        counters: spec.counters,
        findings: &[],
        approved: spec.approved,
    }
}

struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

fn stats(mut nanos: Vec<u64>) -> Stats {
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() as f64 * q) as usize).min(nanos.len() - 1)] as f64 / 1000.0;
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: nanos.last().copied().unwrap_or(0) as f64 / 1000.0,
        mean: nanos.iter().sum::<u64>() as f64 / nanos.len() as f64 / 1000.0,
    }
}

/// Times `decide` over `iterations` requests cycling through `specs`, after a warm-up.
fn measure(specs: &[Spec], iterations: usize, decide: impl FnMut(&Spec) -> bool) -> (Stats, usize) {
    let (all, _, allowed) = measure_with_best(specs, iterations, decide);
    (all, allowed)
}

/// Like [`measure`], also returning the distribution of each distinct request's fastest time:
/// preemption and other load rarely hits every repetition of one request, so this shows the
/// cost of the requests themselves (which ones are slow), not the machine's noise.
fn measure_with_best(
    specs: &[Spec],
    iterations: usize,
    mut decide: impl FnMut(&Spec) -> bool,
) -> (Stats, Vec<u64>, usize) {
    for spec in specs.iter().cycle().take(specs.len() * 2) {
        black_box(decide(spec));
    }
    let mut nanos = Vec::with_capacity(iterations);
    let mut best = vec![u64::MAX; specs.len()];
    let mut allowed = 0;
    for (index, spec) in specs.iter().enumerate().cycle().take(iterations) {
        let start = Instant::now();
        let ok = black_box(decide(spec));
        let elapsed = start.elapsed().as_nanos() as u64;
        nanos.push(elapsed);
        best[index] = best[index].min(elapsed);
        allowed += usize::from(ok);
    }
    (stats(nanos), best, allowed)
}

fn print(name: &str, s: &Stats, allowed: usize, iterations: usize) {
    println!(
        "{name:<44} p50 {:>7.2} µs  p99 {:>7.2} µs  max {:>8.1} µs  mean {:>7.2} µs  allowed {allowed}/{iterations}",
        s.p50, s.p99, s.max, s.mean
    );
}

fn run(label: &str, source: &str, specs: &[Spec], iterations: usize) -> Result<(f64, f64), String> {
    let engine = PolicyEngine::empty();
    let started = Instant::now();
    let summary = engine.replace(source).map_err(|e| e.to_string())?;
    let load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let peer_set = PolicySet::from_str(source).map_err(|e| e.to_string())?;
    let authorizer = Authorizer::new();

    // Sanity: the sliced engine and plain Cedar agree on every distinct request.
    let mut mismatches = 0;
    for spec in specs {
        let req = request(spec);
        let (cedar, entities) = to_cedar(&req).map_err(|e| e.to_string())?;
        let peer = authorizer.is_authorized(&cedar, &peer_set, &entities).decision() == CedarDecision::Allow;
        mismatches += usize::from(engine.decide(&req).allowed != peer);
    }

    println!(
        "\n== {label}: {} policies (parse + strict validation {load_ms:.1} ms), {} distinct requests, {iterations} timed ==",
        summary.policies,
        specs.len()
    );
    let (sliced, best_of_each, allowed_a) =
        measure_with_best(specs, iterations, |spec| engine.decide(&request(spec)).allowed);
    print("(a) mandate decide (sliced, cached)", &sliced, allowed_a, iterations);
    let measured: Vec<u64> = best_of_each.iter().copied().filter(|nanos| *nanos != u64::MAX).collect();
    let best = stats(measured);
    println!(
        "    best time of each distinct request:      p50 {:>7.2} µs  p99 {:>7.2} µs  max {:>8.1} µs",
        best.p50, best.p99, best.max
    );
    println!("    cached request scopes: {}", engine.cached_slices());
    if let Some(count) = std::env::var("BENCH_SLOWEST").ok().and_then(|n| n.parse::<usize>().ok()) {
        let mut order: Vec<usize> = (0..specs.len()).filter(|i| best_of_each[*i] != u64::MAX).collect();
        order.sort_unstable_by_key(|i| std::cmp::Reverse(best_of_each[*i]));
        for index in order.into_iter().take(count) {
            let spec = &specs[index];
            let decision = engine.decide(&request(spec));
            println!(
                "    slow {:>6.2} µs  {} {} approved={} {:?} -> allowed={} step_up={} ids={}",
                best_of_each[index] as f64 / 1000.0,
                spec.owner,
                spec.tool,
                spec.approved,
                spec.counters,
                decision.allowed,
                decision.step_up,
                decision.policies_for_audit()
            );
        }
    }
    if std::env::var_os("BENCH_BREAKDOWN").is_some() {
        let (build, _) = measure(specs, iterations, |spec| to_cedar(&request(spec)).is_ok());
        print("    building Cedar request + entities", &build, 0, iterations);
        let (ctx, _) =
            measure(specs, iterations, |spec| mandate_policy::request::context(&request(spec), false).is_ok());
        print("    building the context alone", &ctx, 0, iterations);
        let (no_args, _) = measure(specs, iterations, |spec| {
            engine.decide(&PolicyRequest { arguments: None, ..request(spec) }).allowed
        });
        print("    (a) without arguments", &no_args, 0, iterations);
    }
    if std::env::var_os("BENCH_SLICED_ONLY").is_some() {
        return Ok((sliced.p99, 0.0));
    }
    // Plain Cedar is ~10x slower; a quarter of the iterations keeps the run short.
    let peer_iterations = (iterations / 4).max(1);
    let (peer, allowed_b) = measure(specs, peer_iterations, |spec| {
        let req = request(spec);
        match to_cedar(&req) {
            Ok((cedar, entities)) => {
                authorizer.is_authorized(&cedar, &peer_set, &entities).decision() == CedarDecision::Allow
            }
            Err(_) => false,
        }
    });
    print("(b) cedar is_authorized, full set", &peer, allowed_b, peer_iterations);
    let prebuilt: Vec<_> = specs.iter().filter_map(|spec| to_cedar(&request(spec)).ok()).collect();
    let mut index = 0;
    let (bare, allowed_c) = measure(specs, peer_iterations, |_| {
        let (cedar, entities) = &prebuilt[index % prebuilt.len()];
        index += 1;
        authorizer.is_authorized(cedar, &peer_set, entities).decision() == CedarDecision::Allow
    });
    print("(b') cedar is_authorized only (prebuilt req)", &bare, allowed_c, peer_iterations);
    println!(
        "    ratio (b)/(a): p50 {:.1}x  p99 {:.1}x; decisions differing from plain Cedar: {mismatches}",
        peer.p50 / sliced.p50,
        peer.p99 / sliced.p99
    );
    println!(
        "RESULT {label}_sliced_p50_us={:.2} {label}_sliced_p99_us={:.2} {label}_sliced_max_us={:.1} {label}_sliced_best_p99_us={:.2} {label}_cedar_p50_us={:.2} {label}_cedar_p99_us={:.2} {label}_cedar_bare_p99_us={:.2} {label}_mismatches={mismatches}",
        sliced.p50, sliced.p99, sliced.max, best.p99, peer.p50, peer.p99, bare.p99
    );
    if mismatches > 0 {
        return Err(format!("{mismatches} decisions differ from plain Cedar"));
    }
    Ok((sliced.p99, peer.p99))
}

fn main() {
    let iterations: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(200_000);
    let specs = specs();
    let realistic = match run("realistic", &realistic_policies(), &specs, iterations) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("realistic run failed: {error}");
            std::process::exit(1);
        }
    };
    if std::env::var_os("BENCH_REALISTIC_ONLY").is_some() {
        return;
    }
    let worst = match run("worst_case", &all_matching_policies(), &specs, iterations) {
        Ok(result) => result,
        Err(error) => {
            eprintln!("worst-case run failed: {error}");
            std::process::exit(1);
        }
    };
    println!(
        "\ntarget: p99 < 50 µs with 200 policies for a resource — realistic sliced p99 {:.2} µs ({}), worst case (all 200 heads match) p99 {:.2} µs ({})",
        realistic.0,
        if realistic.0 < 50.0 { "met" } else { "NOT met" },
        worst.0,
        if worst.0 < 50.0 { "met" } else { "NOT met" },
    );
}
