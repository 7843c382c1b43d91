//! `mandate demo` end to end: the real binary plays its seven steps, each with its evidence, exits 0
//! and leaves no data behind; stopped half-way (SIGTERM, as Ctrl-C), it still removes its data.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::bin;

/// The demo with its temporary directory created under `tmp`.
fn demo(tmp: &Path) -> Command {
    let mut command = Command::new(bin());
    command.arg("demo").env("TMPDIR", tmp).env_remove("MANDATE_CONFIG").env("MANDATE_LOG", "warn");
    command
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// The value after `name=` on a line, up to the next space.
fn value_of<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split(' ').next()
}

#[test]
fn the_demo_plays_every_step_with_its_evidence_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let output = demo(tmp.path()).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\n{stdout}\n{stderr}", output.status.code());
    let lines: Vec<&str> = stdout.lines().collect();

    for step in 1..=7 {
        assert!(lines.iter().any(|l| l.starts_with(&format!("{step}. "))), "no step {step}:\n{stdout}");
    }
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    // 1: the token's subject is the agent's SPIFFE ID, obtained without a client secret.
    assert!(has("access token: sub=spiffe://mandate.local/agent/assistant client_id=federation:"), "{stdout}");
    assert!(has("no client secret -> 200"), "{stdout}");
    assert!(has("workload.attest allow"), "{stdout}");
    // 2: the redeemed delegation is Alice's, read-only, with the agent as actor.
    assert!(has(
        "Mandate redeemed it -> 200: sub=alice act={\"sub\":\"spiffe://mandate.local/agent/assistant\"} scope=read"
    ));
    // 3: read allowed, delete refused by the policy.
    assert!(has("read_record -> 200"), "{stdout}");
    assert!(has("delete_record -> 403 policy_denied"), "{stdout}");
    // 4: approval required, granted once, refused the second time.
    assert!(has("transfer_funds -> 403 approval_required"), "{stdout}");
    assert!(has("transfer_funds with the approval token -> 200"), "{stdout}");
    assert!(has("-> 403 invalid_approval"), "{stdout}");
    assert!(has("gateway.forward allow") && has("tool=transfer_funds approved=true"), "{stdout}");
    // 5: one txn on all three hops, and the audit query for it finds the gateway's events.
    let hops: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| ["order", "risk", "payment"].contains(&l.trim().split(' ').next().unwrap_or("")))
        .collect();
    assert_eq!(hops.len(), 3, "{stdout}");
    let txn = value_of(hops[0], "txn").unwrap();
    for hop in &hops {
        assert_eq!(value_of(hop, "txn"), Some(txn), "{hop}");
        assert_eq!(value_of(hop, "sub"), Some("alice"), "{hop}");
        assert_eq!(value_of(hop, "act"), Some("spiffe://mandate.local/agent/assistant"), "{hop}");
    }
    assert!(has(&format!("audit query --txn {txn}")), "{stdout}");
    assert!(lines.iter().any(|l| l.contains("gateway.forward allow") && l.contains("path=/orders")), "{stdout}");
    // 6: the kill switch, then 401.
    assert!(has("revoke.agent allow"), "{stdout}");
    assert!(has("read_record with the same token -> 401"), "{stdout}");
    assert!(has("gateway.forward deny reason=invalid_token"), "{stdout}");
    // 7: verified by the independent verifier.
    assert!(lines.iter().any(|l| l.contains("mandate-audit-verify:") && l.ends_with(": verified")), "{stdout}");
    assert!(has("All 7 steps showed their evidence."), "{stdout}");

    assert!(entries(tmp.path()).is_empty(), "left behind: {:?}", entries(tmp.path()));
}

#[test]
fn an_interrupted_demo_still_removes_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = demo(tmp.path()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    // Interrupt once the servers run, just before the story begins.
    loop {
        let mut line = String::new();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "the demo ended early:\n{seen}");
        seen.push_str(&line);
        if line.trim_start().starts_with("gateway (MCP + orders):") {
            break;
        }
    }
    assert!(!entries(tmp.path()).is_empty(), "the demo made no data directory");
    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    stdout.read_to_string(&mut seen).unwrap();
    assert!(!status.success(), "{seen}");
    assert!(!seen.contains("All 7 steps"), "{seen}");
    assert!(entries(tmp.path()).is_empty(), "left behind: {:?}\n{seen}", entries(tmp.path()));
}
