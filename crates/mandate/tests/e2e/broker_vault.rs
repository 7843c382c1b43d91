//! `mandate broker vault …` as an operator runs it: secrets go in on stdin and never come out
//! on stdout or stderr, a wrong passphrase and a tampered file are refused with clear messages.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::harness::bin;

const PASSPHRASE: &str = "e2e vault passphrase";
const API_KEY: &str = "ghp_e2eSECRETvalue0123456789";
const CLIENT_SECRET: &str = "cs_e2eSECRETclient";
const ROTATED: &str = "ghp_e2eROTATEDvalue";
const ALL_SECRETS: [&str; 4] = [PASSPHRASE, API_KEY, CLIENT_SECRET, ROTATED];

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn vault_path(&self) -> PathBuf {
        self.dir.path().join("data/broker/vault.json")
    }

    /// Runs `mandate --data-dir … broker vault ARGS` with `env` and `stdin`; checks that no
    /// secret appears in its output whatever the outcome.
    fn run(&self, env: &[(&str, &str)], stdin: &str, args: &[&str]) -> Output {
        let mut command = Command::new(bin());
        command.arg("--data-dir").arg(self.dir.path().join("data")).args(["broker", "vault"]).args(args);
        command.env_remove("MANDATE_VAULT_PASSPHRASE").envs(env.iter().copied());
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        for secret in ALL_SECRETS {
            assert!(!printed.contains(secret), "`vault {args:?}` printed a secret: {printed}");
        }
        out
    }

    fn ok(&self, stdin: &str, args: &[&str]) -> String {
        let out = self.run(&[("MANDATE_VAULT_PASSPHRASE", PASSPHRASE)], stdin, args);
        assert!(out.status.success(), "vault {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = self.run(env, "", args);
        assert!(!out.status.success(), "vault {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }
}

fn with_passphrase(p: &str) -> [(&'static str, &str); 1] {
    [("MANDATE_VAULT_PASSPHRASE", p)]
}

#[test]
fn add_list_rotate_and_remove_without_ever_printing_a_secret() {
    let cli = Cli::new();
    cli.ok("", &["init"]);
    assert!(!std::fs::read_to_string(cli.vault_path()).unwrap().contains(API_KEY));

    cli.ok(&format!("{API_KEY}\n"), &["add", "github:work", "--kind", "api-key"]);
    cli.ok(
        &format!("{CLIENT_SECRET}\n"),
        &[
            "add",
            "as:main",
            "--kind",
            "oauth-client",
            "--token-endpoint",
            "https://as.example/oauth2/token",
            "--client-id",
            "broker",
            "--scope",
            "read",
        ],
    );
    let stored = std::fs::read_to_string(cli.vault_path()).unwrap();
    assert!(!stored.contains(API_KEY) && !stored.contains(CLIENT_SECRET));

    let list = cli.ok("", &["list"]);
    assert!(list.contains("github:work") && list.contains("api_key"), "{list}");
    assert!(list.contains("as:main") && list.contains("https://as.example/oauth2/token"), "{list}");

    let before = std::fs::read_to_string(cli.vault_path()).unwrap();
    cli.ok(&format!("{ROTATED}\n"), &["rotate", "github:work"]);
    assert_ne!(before, std::fs::read_to_string(cli.vault_path()).unwrap());
    let list = cli.ok("", &["list"]);
    let line = list.lines().find(|l| l.starts_with("github:work")).unwrap();
    assert!(!line.contains(" - "), "the rotation time is listed: {line}");

    cli.ok("", &["rm", "github:work"]);
    let list = cli.ok("", &["list"]);
    assert!(!list.contains("github:work") && list.contains("as:main"));
    let err = cli.fails(&with_passphrase(PASSPHRASE), &["rm", "github:work"]);
    assert!(err.contains("no vault entry named \"github:work\""), "{err}");
}

#[test]
fn a_wrong_or_missing_passphrase_is_refused_clearly() {
    let cli = Cli::new();
    cli.ok("", &["init"]);
    cli.ok(&format!("{API_KEY}\n"), &["add", "github:work", "--kind", "api-key"]);
    let err = cli.fails(&with_passphrase("some other passphrase"), &["list"]);
    assert!(err.contains("wrong vault passphrase"), "{err}");
    let err = cli.fails(&[], &["list"]);
    assert!(err.contains("MANDATE_VAULT_PASSPHRASE"), "{err}");
    let err =
        cli.fails(&with_passphrase("short"), &["init", "--broker-dir", cli.dir.path().join("b2").to_str().unwrap()]);
    assert!(err.contains("at least 8 characters"), "{err}");
}

#[test]
fn a_flipped_byte_in_the_vault_file_is_reported_as_tampering() {
    let cli = Cli::new();
    cli.ok("", &["init"]);
    cli.ok(&format!("{API_KEY}\n"), &["add", "github:work", "--kind", "api-key"]);
    let path = cli.vault_path();
    let original = std::fs::read(&path).unwrap();
    // The connection's name and the middle of the file (inside the entry's ciphertext or keys).
    let name_at = String::from_utf8_lossy(&original).find("github:work").unwrap() + 1;
    for at in [name_at, original.len() / 2] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let err = cli.fails(&with_passphrase(PASSPHRASE), &["list"]);
        assert!(err.contains("tampered"), "{err}");
    }
}

#[test]
fn secrets_come_from_stdin_and_flags_must_fit_the_kind() {
    let cli = Cli::new();
    cli.ok("", &["init"]);
    let env = with_passphrase(PASSPHRASE);
    let err = cli.run(&env, "", &["add", "github:work", "--kind", "api-key"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("expected 1 non-empty line on stdin"));
    let err = cli.fails(&env, &["add", "as", "--kind", "oauth-client", "--client-id", "c"]);
    assert!(err.contains("needs --token-endpoint"), "{err}");
    let err = cli.fails(&env, &["add", "gh", "--kind", "api-key", "--token-endpoint", "https://x.example/t"]);
    assert!(err.contains("does not apply"), "{err}");
    let err = cli.fails(&env, &["add", "Bad Name", "--kind", "mandate-workload"]);
    assert!(err.contains("needs --token-endpoint") || err.contains("invalid connection name"), "{err}");

    // A confidential refresh-token client: two lines. A workload entry: nothing on stdin.
    cli.ok(
        &format!("rt_{API_KEY}\n{CLIENT_SECRET}\n"),
        &[
            "add",
            "as:user",
            "--kind",
            "refresh-token",
            "--token-endpoint",
            "https://as.example/oauth2/token",
            "--client-id",
            "app",
            "--confidential",
        ],
    );
    cli.ok(
        "",
        &[
            "add",
            "mandate:self",
            "--kind",
            "mandate-workload",
            "--token-endpoint",
            "https://mandate.example/oauth2/token",
            "--resource",
            "https://api.example",
        ],
    );
    // An ID-JAG entry: the ID token, the resource AS's client secret, the IdP's client secret.
    cli.ok(
        &format!("id.{API_KEY}.jwt\n{CLIENT_SECRET}\nidp_{CLIENT_SECRET}\n"),
        &[
            "add",
            "crm:alice",
            "--kind",
            "id-jag",
            "--idp-token-endpoint",
            "https://idp.example/oauth2/token",
            "--idp-client-id",
            "agent-client",
            "--audience",
            "https://crm-as.example",
            "--token-endpoint",
            "https://crm-as.example/token",
            "--client-id",
            "crm-client",
        ],
    );
    let err = cli.fails(&env, &["add", "crm:bob", "--kind", "id-jag", "--idp-client-id", "c"]);
    assert!(err.contains("needs --idp-token-endpoint"), "{err}");
    let err = cli.fails(&env, &["rotate", "mandate:self"]);
    assert!(err.contains("stores no secret"), "{err}");
    let list = cli.ok("", &["list"]);
    assert!(list.contains("refresh_token") && list.contains("mandate_workload"), "{list}");
    assert!(list.contains("crm:alice") && list.contains("id_jag"), "{list}");
}

#[test]
fn key_files_and_rekeying() {
    let cli = Cli::new();
    let key_file = cli.dir.path().join("vault.key");
    let key = key_file.to_str().unwrap();
    let out = cli.run(&[], "", &["init", "--key-file", key]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&key_file).unwrap().len(), 32);
    // A second init refuses, and makes no orphan key file on the way.
    let other_key = cli.dir.path().join("other.key");
    let err = cli.fails(&[], &["init", "--key-file", other_key.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    assert!(!other_key.exists());
    let out = cli.run(&[], &format!("{API_KEY}\n"), &["add", "github:work", "--kind", "api-key", "--key-file", key]);
    assert!(out.status.success());
    let err = cli.fails(&with_passphrase(PASSPHRASE), &["list"]);
    assert!(err.contains("locked with a key file"), "{err}");

    // Key file → passphrase (from a file), then the key file no longer opens it.
    let new_passphrase = write(cli.dir.path(), "new-passphrase", &format!("{PASSPHRASE}\n"));
    let out =
        cli.run(&[], "", &["rekey", "--key-file", key, "--new-passphrase-file", new_passphrase.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cli.ok("", &["list"]).contains("github:work"));
    assert!(!cli.run(&[], "", &["list", "--key-file", key]).status.success());

    // Passphrase → another passphrase from MANDATE_VAULT_NEW_PASSPHRASE.
    let env = [("MANDATE_VAULT_PASSPHRASE", PASSPHRASE), ("MANDATE_VAULT_NEW_PASSPHRASE", "yet another passphrase")];
    assert!(cli.run(&env, "", &["rekey"]).status.success());
    assert!(cli.run(&with_passphrase("yet another passphrase"), "", &["list"]).status.success());
    let err = cli.fails(&with_passphrase(PASSPHRASE), &["list"]);
    assert!(err.contains("wrong vault passphrase"), "{err}");
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// A `mandate_workload` entry: no stored secret; the broker (this test process, attested by
/// uid and executable) trades its own JWT-SVID from the Workload API for a Mandate access token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandate_workload_entry_obtains_tokens_with_the_agents_own_svid() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    use mandate_broker::credentials::CredentialProvider;
    use mandate_broker::lifecycle::{TokenClientOptions, VaultCredentials};
    use mandate_broker::vault::{Vault, VaultKey};

    use crate::harness::{RESOURCE, Server, claims};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/workload.sock");
    let server = Server::start_in(dir, &[("MANDATE_WORKLOAD_SOCKET", socket.to_str().unwrap())]);
    let probe = server.dir.path().join("uid-probe");
    std::fs::write(&probe, b"").unwrap();
    let uid_selector = format!("unix:uid:{}", std::fs::metadata(&probe).unwrap().uid());
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let path_selector = format!("unix:path:{}", exe.display());
    server.cli(&["owner", "create", "alice"]);
    server.cli(&["resource", "create", RESOURCE, "--scope", "read"]);
    let agent = "spiffe://mandate.local/agent/broker-bot";
    server.cli(&[
        "agent",
        "create",
        "broker-bot",
        "--owner",
        "alice",
        "--scope",
        "read",
        "--selector",
        &uid_selector,
        "--selector",
        &path_selector,
    ]);
    // The operator lets the agent's own JWT-SVIDs (audience: the issuer) stand for the agent.
    let own_issuer = format!("{}/spiffe", server.base);
    server.cli_env(
        &[("MANDATE_ISSUER", server.base.as_str())],
        &[
            "trust",
            "add-federation",
            "broker-self",
            "--issuer",
            &own_issuer,
            "--audience",
            &server.base,
            "--subject",
            agent,
            "--agent",
            "broker-bot",
        ],
    );

    // The entry is made with the CLI, like an operator would; nothing secret goes in.
    let broker_dir = server.dir.path().join("broker");
    let broker_dir_arg = broker_dir.to_str().unwrap();
    let endpoint = server.url("/oauth2/token");
    for args in [
        vec!["init", "--broker-dir", broker_dir_arg],
        vec![
            "add",
            "mandate:self",
            "--broker-dir",
            broker_dir_arg,
            "--kind",
            "mandate-workload",
            "--token-endpoint",
            &endpoint,
            "--resource",
            RESOURCE,
            "--scope",
            "read",
        ],
    ] {
        let mut full = vec!["broker", "vault"];
        full.extend(args);
        server.cli_env(&[("MANDATE_VAULT_PASSPHRASE", PASSPHRASE)], &full);
    }

    let key = VaultKey::passphrase(zeroize::Zeroizing::new(PASSPHRASE.to_owned())).unwrap();
    let vault = Vault::open(&broker_dir.join("vault.json"), &key).unwrap();
    let clock = Arc::new(mandate_core::SystemClock);
    let credentials = VaultCredentials::new(vault, TokenClientOptions::default(), clock, Some(socket)).unwrap();
    let token = credentials.credential("mandate:self").await.unwrap();
    let token_claims = claims(&token);
    assert_eq!(token_claims["sub"], agent);
    assert_eq!(token_claims["aud"], RESOURCE);
    assert_eq!(token_claims["scope"], "read");
    assert_eq!(server.introspect(&token).await["active"], true);
    // Cached: the same token again, no second issuance.
    assert_eq!(credentials.credential("mandate:self").await.unwrap().as_str(), token.as_str());
    let issued = server
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == "token.issue" && e["decision"] == "allow" && e["agent"] == agent)
        .count();
    assert_eq!(issued, 1);
}
