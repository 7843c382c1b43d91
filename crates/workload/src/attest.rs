//! Workload attestation: who is calling on the Workload API socket, from what the kernel says
//! about the connection (`SO_PEERCRED`) and about the process (`/proc/<pid>`), expressed as
//! selectors; and which registered agents a caller with those selectors is.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use mandate_core::Agent;

/// The process on the other end of one Workload API connection, as attested when it connected.
#[derive(Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Absent when the kernel does not report it (never on Linux).
    pub pid: Option<i32>,
    /// The real path of the process's executable, when `/proc/<pid>/exe` is readable to us
    /// (the same user, or a privileged server).
    pub exe: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// `/proc/<pid>` opened at attestation time. The handle keeps referring to *that* process:
    /// once it exits, lookups through it fail even if its pid is reused, which is how
    /// [`Peer::is_alive`] detects a caller replaced by another process under the same pid.
    proc_dir: Option<File>,
}

/// Where the kernel publishes processes, users and groups; tests point it elsewhere.
#[derive(Debug, Clone)]
pub struct System {
    pub proc: PathBuf,
    pub passwd: PathBuf,
    pub group: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        Self { proc: "/proc".into(), passwd: "/etc/passwd".into(), group: "/etc/group".into() }
    }
}

impl Peer {
    /// Attests the peer of a connected unix socket.
    pub fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(Self::from_credentials(&System::default(), cred.uid(), cred.gid(), cred.pid()))
    }

    /// Builds a peer from kernel credentials, reading what else `/proc` and the user database
    /// tell about it. Missing information only means fewer selectors.
    pub fn from_credentials(system: &System, uid: u32, gid: u32, pid: Option<i32>) -> Self {
        let proc_dir = pid.filter(|p| *p > 0).and_then(|p| File::open(system.proc.join(p.to_string())).ok());
        // Read the executable through the handle, so it is the same process the handle watches.
        let exe = proc_dir.as_ref().and_then(|dir| std::fs::read_link(fd_path(dir).join("exe")).ok());
        // A deleted or replaced binary reads as "/path (deleted)": it names no file any more.
        let exe = exe.filter(|p| p.is_absolute() && !p.to_string_lossy().ends_with(" (deleted)"));
        Self {
            uid,
            gid,
            pid,
            exe,
            user: name_for_id(&system.passwd, uid),
            group: name_for_id(&system.group, gid),
            proc_dir,
        }
    }

    /// The caller's selectors, sorted. The pid is not one: it names a process, not a workload,
    /// and is reused.
    pub fn selectors(&self) -> Vec<String> {
        let mut selectors = vec![format!("unix:uid:{}", self.uid), format!("unix:gid:{}", self.gid)];
        if let Some(user) = &self.user {
            selectors.push(format!("unix:user:{user}"));
        }
        if let Some(group) = &self.group {
            selectors.push(format!("unix:group:{group}"));
        }
        if let Some(exe) = &self.exe {
            selectors.push(format!("unix:path:{}", exe.display()));
        }
        selectors.sort();
        selectors
    }

    /// Whether the attested process still runs. A caller that exited (perhaps after handing its
    /// connection to another process) is no longer entitled to anything. Without a `/proc`
    /// handle (no pid, or `/proc` mounted with `hidepid`) there is nothing to watch: uid and gid
    /// were fixed by the kernel at `connect()` and cannot be changed by pid reuse, and no
    /// `/proc`-derived selector (the path) was produced that could be.
    pub fn is_alive(&self) -> bool {
        match &self.proc_dir {
            Some(dir) => std::fs::metadata(fd_path(dir).join("stat")).is_ok(),
            None => true,
        }
    }

    /// A one-line description for audit details and logs.
    pub fn describe(&self) -> String {
        let pid = self.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let path = self.exe.as_ref().map_or_else(|| "-".to_owned(), |p| p.display().to_string());
        format!("uid={} gid={} pid={pid} path={path}", self.uid, self.gid)
    }
}

/// `/proc/self/fd/<n>`: a path that resolves to the directory the handle was opened on.
fn fd_path(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// The name with numeric id `id` in a `/etc/passwd`- or `/etc/group`-format file
/// (`name:password:id:…`).
fn name_for_id(path: &Path, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let parsed: u32 = fields.nth(1)?.parse().ok()?;
        (parsed == id && !name.is_empty()).then(|| name.to_owned())
    })
}

/// Whether `agent` is the caller: it has selectors and the caller has every one of them.
pub fn agent_matches(agent: &Agent, caller_selectors: &[String]) -> bool {
    !agent.selectors.is_empty() && agent.selectors.iter().all(|s| caller_selectors.contains(s))
}

/// The agents a caller with `caller_selectors` is, in a fixed order: the most specific
/// registration (most selectors) first, then by name. The first one is the caller's default
/// identity on the Workload API.
pub fn matching_agents(agents: &[Agent], caller_selectors: &[String]) -> Vec<Agent> {
    let mut matched: Vec<Agent> = agents.iter().filter(|a| agent_matches(a, caller_selectors)).cloned().collect();
    matched.sort_by(|a, b| b.selectors.len().cmp(&a.selectors.len()).then_with(|| a.name.cmp(&b.name)));
    matched
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use mandate_core::{Name, TrustDomain};

    use super::*;

    fn agent(name: &str, selectors: &[&str]) -> Agent {
        let td = TrustDomain::parse("mandate.local").unwrap();
        Agent {
            name: Name::parse(name).unwrap(),
            owner: Name::parse("alice").unwrap(),
            spiffe_id: td.agent_id(&Name::parse(name).unwrap()),
            scopes: vec![],
            selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
            may_impersonate: false,
            created_at_ms: 0,
        }
    }

    fn names(agents: &[Agent]) -> Vec<String> {
        agents.iter().map(|a| a.name.to_string()).collect()
    }

    #[test]
    fn an_agent_matches_only_when_all_its_selectors_are_present() {
        let caller: Vec<String> = ["unix:gid:100", "unix:path:/usr/bin/bot", "unix:uid:1000"].map(String::from).into();
        let agents = vec![
            agent("by-uid", &["unix:uid:1000"]),
            agent("by-uid-and-path", &["unix:uid:1000", "unix:path:/usr/bin/bot"]),
            agent("other-path", &["unix:uid:1000", "unix:path:/usr/bin/other"]),
            agent("other-uid", &["unix:uid:0"]),
            agent("no-selectors", &[]),
        ];
        assert_eq!(names(&matching_agents(&agents, &caller)), ["by-uid-and-path", "by-uid"]);
        assert!(matching_agents(&agents, &["unix:uid:7".to_owned()]).is_empty());
        assert!(!agent_matches(&agent("no-selectors", &[]), &caller), "no selectors never matches");
    }

    #[test]
    fn equally_specific_matches_are_ordered_by_name() {
        let caller = vec!["unix:uid:1".to_owned(), "unix:gid:2".to_owned()];
        let agents = vec![agent("zeta", &["unix:uid:1"]), agent("alpha", &["unix:gid:2"])];
        assert_eq!(names(&matching_agents(&agents, &caller)), ["alpha", "zeta"]);
    }

    #[test]
    fn the_current_process_attests_with_its_real_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"x").unwrap();
        let meta = std::fs::metadata(&probe).unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        let peer = Peer::from_credentials(&System::default(), meta.uid(), meta.gid(), Some(pid));
        let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(peer.exe.as_deref(), Some(exe.as_path()));
        let selectors = peer.selectors();
        assert!(selectors.contains(&format!("unix:uid:{}", meta.uid())));
        assert!(selectors.contains(&format!("unix:path:{}", exe.display())));
        assert!(!selectors.iter().any(|s| s.starts_with("unix:pid")));
        assert!(peer.is_alive());
    }

    #[test]
    fn a_process_that_exited_is_no_longer_alive() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let peer = Peer::from_credentials(&System::default(), 0, 0, Some(pid));
        assert!(peer.is_alive());
        assert!(peer.exe.as_ref().is_some_and(|p| p.ends_with("sleep")), "{:?}", peer.exe);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!peer.is_alive());
    }

    #[tokio::test]
    async fn socket_peers_are_attested_from_the_kernel() {
        let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&ours).unwrap();
        assert_eq!(peer.pid, Some(i32::try_from(std::process::id()).unwrap()));
        assert!(peer.is_alive());
        assert!(peer.describe().starts_with(&format!("uid={} ", peer.uid)));
    }

    #[test]
    fn user_and_group_names_come_from_the_databases() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        let group = dir.path().join("group");
        std::fs::write(&passwd, "# comment\nroot:x:0:0:root:/root:/bin/sh\nbot:x:1000:1000::/home/bot:/bin/sh\n")
            .unwrap();
        std::fs::write(&group, "root:x:0:\nbots:x:1000:bot\n").unwrap();
        let system = System { proc: dir.path().join("no-proc"), passwd, group };
        let peer = Peer::from_credentials(&system, 1000, 1000, Some(1));
        assert_eq!(peer.selectors(), ["unix:gid:1000", "unix:group:bots", "unix:uid:1000", "unix:user:bot"]);
        assert!(peer.exe.is_none() && peer.is_alive(), "no /proc entry: credentials only");
        let unknown = Peer::from_credentials(&system, 4242, 4242, None);
        assert_eq!(unknown.selectors(), ["unix:gid:4242", "unix:uid:4242"]);
    }
}
