//! Operator commands on a data directory. Each goes through the same `authz` functions as the
//! admin API, so every change is validated and audited the same way.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use mandate_authz::Authz;
use mandate_authz::registry::{self, NewAgent, NewClient, RecordKind};
use mandate_core::OAuthError;
use mandate_crypto::Alg;
use mandate_store::EpochKind;
use serde::Serialize;
use serde_json::json;

pub struct Output {
    pub json: bool,
}

impl Output {
    pub(crate) fn show<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> anyhow::Result<()> {
        let text = if self.json { serde_json::to_string_pretty(value)? } else { human() };
        println!("{text}");
        Ok(())
    }
}

/// A file the operator named on the command line, as text.
pub(crate) fn read_text(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// [`read_text`] for an optional argument.
pub(crate) fn read_optional(path: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    path.map(read_text).transpose()
}

pub(crate) fn correlation() -> String {
    format!("cli-{}", uuid::Uuid::now_v7())
}

#[derive(Debug, Subcommand)]
pub enum OwnerCmd {
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
    },
    List,
    Delete {
        name: String,
    },
    /// Set the password the owner signs in with at the authorization endpoint. It is read from
    /// the first line of standard input, never from the command line:
    /// `read -rs PW && printf '%s\n' "$PW" | mandate owner set-password NAME`.
    SetPassword {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Register an agent; it gets the SPIFFE ID spiffe://<trust-domain>/agent/<name>.
    Create {
        name: String,
        #[arg(long)]
        owner: String,
        /// The most this agent may be granted (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Workload attestation selector (repeatable), e.g. unix:uid:1000 or unix:path:/usr/bin/agent.
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// Let token exchange give this agent tokens that impersonate their subject (no `act`).
        #[arg(long)]
        may_impersonate: bool,
    },
    List,
    Delete {
        name: String,
    },
}

// Parsed once per process from the command line: the size of the `Create` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Register an OAuth client, for an agent or (with --redirect-uri) an application people
    /// sign in to; a secret is printed once.
    Create {
        #[arg(long)]
        agent: Option<String>,
        /// client_secret_basic (default), client_secret_post, private_key_jwt or none (public).
        #[arg(long, default_value = "client_secret_basic")]
        auth: String,
        /// Redirect URI for the authorization code grant (repeatable), matched exactly.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Grant type (repeatable); defaults follow from --agent and --redirect-uri.
        #[arg(long = "grant-type")]
        grant_types: Vec<String>,
        /// Name shown on the consent page.
        #[arg(long)]
        name: Option<String>,
        /// JWK Set file with the client's public keys (private_key_jwt).
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// client_id to use (default: <agent>.<random>).
        #[arg(long)]
        id: Option<String>,
        /// Allow this client (a resource server) to introspect other clients' tokens.
        #[arg(long)]
        introspect: bool,
        /// Where OpenID Connect back-channel logout tokens for this client are posted.
        #[arg(long)]
        backchannel_logout_uri: Option<String>,
        /// CIBA token delivery: poll (the default) or ping (needs the CIBA grant).
        #[arg(long)]
        backchannel_token_delivery_mode: Option<String>,
        /// CIBA ping mode: the client's notification endpoint (https).
        #[arg(long)]
        backchannel_client_notification_endpoint: Option<String>,
    },
    List,
    Delete {
        client_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ResourceCmd {
    Create {
        uri: String,
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    List,
    Delete {
        uri: String,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeArgs {
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    owner: Option<String>,
    #[arg(long)]
    client: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Publish a new token-signing key now; it signs after the publish lead time.
    Rotate {
        #[arg(long, default_value = "EdDSA")]
        alg: String,
        /// Seconds until the new key signs (default: key_publish_lead_secs).
        #[arg(long)]
        activate_in: Option<i64>,
    },
    /// The published JWK Set.
    List,
}

fn oauth(e: OAuthError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code.as_str(), e.description)
}

pub async fn owner(authz: &Authz, cmd: OwnerCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        OwnerCmd::Create { name, display_name } => {
            let owner = registry::create_owner(authz, &name, display_name, &correlation()).await?;
            out.show(&owner, || format!("owner {} created", owner.name))
        }
        OwnerCmd::List => {
            let owners = authz.store.owners().await?;
            out.show(&owners, || owners.iter().map(|o| o.name.to_string()).collect::<Vec<_>>().join("\n"))
        }
        OwnerCmd::Delete { name } => delete(authz, RecordKind::Owner, &name, out).await,
        OwnerCmd::SetPassword { name } => {
            let password = password_from_stdin()?;
            mandate_authz::password::set_owner_password(authz, &name, password, &correlation()).await?;
            out.show(&json!({"owner": name, "password": "set"}), || format!("password of owner {name} set"))
        }
    }
}

/// One line of standard input, without its line ending. A terminal is refused: it would echo
/// the password.
fn password_from_stdin() -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(
            "the password is read from standard input, which is a terminal (it would echo); pipe it in: \
             read -rs PW && printf '%s\\n' \"$PW\" | mandate owner set-password NAME"
        );
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    stdin.lock().read_line(&mut line).context("reading the password from standard input")?;
    let trimmed = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
    Ok(zeroize::Zeroizing::new(trimmed.to_owned()))
}

pub async fn agent(authz: &Authz, cmd: AgentCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        AgentCmd::Create { name, owner, scopes, selectors, may_impersonate } => {
            let new = NewAgent { name, owner, scopes, selectors, may_impersonate };
            let agent = registry::create_agent(authz, new, &correlation()).await?;
            out.show(&agent, || format!("agent {} created: {} (owner {})", agent.name, agent.spiffe_id, agent.owner))
        }
        AgentCmd::List => {
            let agents = authz.store.agents().await?;
            out.show(&agents, || {
                agents
                    .iter()
                    .map(|a| format!("{}\t{}\towner={}\tscopes={}", a.name, a.spiffe_id, a.owner, a.scopes.join(" ")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AgentCmd::Delete { name } => delete(authz, RecordKind::Agent, &name, out).await,
    }
}

pub async fn client(authz: &Authz, cmd: ClientCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        ClientCmd::Create {
            agent,
            auth,
            redirect_uris,
            grant_types,
            name,
            jwks,
            id,
            introspect,
            backchannel_logout_uri,
            backchannel_token_delivery_mode,
            backchannel_client_notification_endpoint,
        } => {
            let jwks = read_optional(jwks.as_deref())?;
            let new = NewClient {
                agent,
                auth_method: auth,
                jwks,
                client_id: id,
                can_introspect: introspect,
                redirect_uris,
                grant_types,
                client_name: name,
                backchannel_logout_uri,
                backchannel_token_delivery_mode,
                backchannel_client_notification_endpoint,
            };
            let made = registry::create_client(authz, new, &correlation()).await?;
            let shown = json!({
                "client_id": made.client.client_id,
                "client_secret": made.secret,
                "token_endpoint_auth_method": made.client.auth_method.as_str(),
                "agent": made.client.agent,
            });
            out.show(&shown, || match &made.secret {
                Some(secret) => format!(
                    "client_id:     {}\nclient_secret: {secret}\n(the secret is shown only now)",
                    made.client.client_id
                ),
                None => format!("client_id: {}", made.client.client_id),
            })
        }
        ClientCmd::List => {
            let clients = authz.store.clients().await?;
            out.show(&clients, || {
                clients
                    .iter()
                    .map(|c| {
                        let agent = c.agent.as_ref().map_or("-".to_owned(), ToString::to_string);
                        format!("{}\tagent={agent}\t{}", c.client_id, c.auth_method.as_str())
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        ClientCmd::Delete { client_id } => delete(authz, RecordKind::Client, &client_id, out).await,
    }
}

pub async fn resource(authz: &Authz, cmd: ResourceCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        ResourceCmd::Create { uri, scopes } => {
            let resource = registry::create_resource(authz, &uri, &scopes, &correlation()).await?;
            out.show(&resource, || format!("resource {} created (scopes: {})", resource.uri, resource.scopes.join(" ")))
        }
        ResourceCmd::List => {
            let resources = authz.store.resources().await?;
            out.show(&resources, || {
                resources
                    .iter()
                    .map(|r| format!("{}\tscopes={}", r.uri, r.scopes.join(" ")))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        ResourceCmd::Delete { uri } => delete(authz, RecordKind::Resource, &uri, out).await,
    }
}

async fn delete(authz: &Authz, kind: RecordKind, key: &str, out: &Output) -> anyhow::Result<()> {
    registry::delete(authz, kind, key, &correlation()).await?;
    out.show(&json!({"deleted": kind.as_str(), "name": key}), || format!("{} {key} deleted", kind.as_str()))
}

pub async fn revoke(authz: &Authz, args: RevokeArgs, out: &Output) -> anyhow::Result<()> {
    let (kind, name) = match (args.agent, args.owner, args.client) {
        (Some(a), _, _) => (EpochKind::Agent, a),
        (_, Some(o), _) => (EpochKind::Owner, o),
        (_, _, Some(c)) => (EpochKind::Client, c),
        _ => bail!("name one of --agent, --owner, --client"),
    };
    let not_before = mandate_authz::revoke::revoke_subject(authz, kind, &name, &correlation()).await.map_err(oauth)?;
    out.show(&json!({ kind.as_str(): name, "revoked_before": not_before }), || {
        format!("every token issued to {} {name} until now (epoch {not_before}) is revoked", kind.as_str())
    })
}

pub async fn keys(authz: &Authz, cmd: KeysCmd, out: &Output) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Rotate { alg, activate_in } => {
            let alg = Alg::parse(&alg).with_context(|| format!("--alg {alg:?}: use EdDSA or ES256"))?;
            let lead = activate_in.unwrap_or(authz.config.key_publish_lead_secs).max(0);
            let purpose = mandate_authz::keyring::PURPOSE_TOKEN;
            let kid =
                authz.keys.rotate(&authz.log, purpose, alg, lead * 1000, authz.clock.now_ms(), &correlation()).await?;
            out.show(&json!({"kid": kid, "alg": alg.as_str(), "activates_in_secs": lead}), || {
                format!("new {} key {kid} is published now and signs in {lead} s", alg.as_str())
            })
        }
        KeysCmd::List => {
            let jwks = authz.keys.jwks();
            out.show(jwks.as_ref(), || serde_json::to_string_pretty(jwks.as_ref()).unwrap_or_default())
        }
    }
}
