//! `NAME.mesh` on this node while `wgmesh up` runs: the resolver's table follows each sync,
//! it answers on this node's mesh addresses, and the OS is told to send `.mesh` to it. This
//! file holds the decisions and what is recorded; [`super::dns::service`] runs them.
//!
//! Only `up` serves DNS: a one-shot `sync` exits at once, so pointing the OS at a resolver
//! that is gone would only make `.mesh` lookups time out. What the OS was told is recorded
//! with the rest of what is applied ([`AppliedDns`]), so the teardown of `up`, `down` after a
//! crash, and a rebuild of the interface remove exactly that.
//!
//! Observe (assignment, peer list, whether systemd-resolved runs, the hosts file), decide
//! ([`wanted`], [`hosts_entries`], pure), apply (plans through the engine's sink, in [`super::dns::service`]).

mod arrival;
pub mod edns;
mod forward;
pub mod resolver;
pub mod service;

use super::error::AgentError;
use super::state::config::AppliedDns;
use crate::os::dns::{self, DnsMethod};
use crate::os::{Plan, TargetOs};
use crate::proto::model::PeerInfo;
use crate::types::InterfaceName;
use resolver::{Table, ZONE};
use serde::Serialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// How `up` was asked to do DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOptions {
    /// Keep the names in a hosts file on Linux without systemd-resolved (`--dns-hosts`).
    pub hosts: bool,
    /// That hosts file (`/etc/hosts` unless `--hosts-file`).
    pub hosts_file: PathBuf,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            hosts: false,
            hosts_file: PathBuf::from(dns::HOSTS_FILE),
        }
    }
}

/// What the OS side should be for `os` with these options and facts.
pub fn wanted(
    os: TargetOs,
    options: &DnsOptions,
    resolved_running: bool,
    real_name: &InterfaceName,
    servers: &[IpAddr],
) -> AppliedDns {
    let method = DnsMethod::for_os(os, resolved_running, options.hosts);
    AppliedDns {
        method,
        interface: real_name.to_string(),
        servers: servers.to_vec(),
        hosts_file: (method == DnsMethod::Hosts).then(|| options.hosts_file.clone()),
    }
}

/// The hosts-file lines for a table: `name.mesh` and its addresses, sorted by name.
pub fn hosts_entries(table: &Table) -> Vec<(String, Vec<IpAddr>)> {
    table
        .entries()
        .into_iter()
        .map(|(name, a)| {
            let mut addrs = vec![IpAddr::V4(a.v4)];
            addrs.extend(a.v6.map(IpAddr::V6));
            (format!("{name}.{ZONE}"), addrs)
        })
        .collect()
}

/// Reads a hosts file; a missing one is empty (we will create it).
pub(super) fn read_hosts(path: &Path) -> Result<String, AgentError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(AgentError::Usage(format!(
            "cannot read {} to keep the .{ZONE} names in it: {e}",
            path.display()
        ))),
    }
}

fn iface(applied: &AppliedDns) -> Result<InterfaceName, AgentError> {
    applied
        .interface
        .parse()
        .map_err(|e| AgentError::Usage(format!("recorded DNS interface: {e}")))
}

/// Everything that removes `applied` from the OS: the method's `off` plan, and the hosts block
/// (read now, so only our block goes). Tolerant where the OS may have dropped it already.
pub fn undo_plan(applied: &AppliedDns) -> Result<Plan, AgentError> {
    let name = iface(applied)?;
    let mut plan = dns::off(applied.method, &name);
    if let Some(path) = &applied.hosts_file {
        plan.extend(dns::hosts_plan(path, &read_hosts(path)?, &name, &[]));
    }
    Ok(plan)
}

/// Mesh DNS in `status`: whether the resolver runs, on which addresses, and how the OS sends
/// `.mesh` queries to it (`method`: resolved, hosts, manual, resolver-file or nrpt; null
/// while `up` is not running). Structured for `--json`; [`DnsStatus::summary`] is the
/// human line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsStatus {
    /// Whether `up` set mesh DNS up (it runs only while `up` does).
    pub running: bool,
    /// How `.mesh` reaches the resolver; `manual` means nothing sends it (see `status
    /// --help`).
    pub method: Option<DnsMethod>,
    /// The resolver's addresses.
    pub servers: Vec<IpAddr>,
    /// The interface the OS setting hangs on.
    pub interface: Option<String>,
    /// The hosts file holding the names, for `hosts`.
    pub hosts_file: Option<PathBuf>,
    /// What stops `.mesh` names from working here although the setting is in place
    /// (Windows: Group Policy NRPT rules override the local one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl DnsStatus {
    /// One short line for the `status` header; the advice for `manual` is in `status
    /// --help` and README.
    pub fn summary(&self) -> String {
        let Some(method) = self.method else {
            return "mesh DNS off (it runs while `wgmesh up` does)".into();
        };
        let servers: Vec<String> = self.servers.iter().map(IpAddr::to_string).collect();
        let how = match method {
            DnsMethod::Resolved => format!("systemd-resolved sends .{ZONE}"),
            DnsMethod::Hosts => format!(
                "names also in {}",
                self.hosts_file
                    .as_deref()
                    .unwrap_or(Path::new(dns::HOSTS_FILE))
                    .display()
            ),
            DnsMethod::ResolverFile => format!("{} sends .{ZONE}", dns::MACOS_RESOLVER_FILE),
            DnsMethod::Nrpt => format!("an NRPT rule sends .{ZONE}"),
            DnsMethod::Manual => format!("nothing sends .{ZONE} here: see wgmesh status --help"),
        };
        let line = format!("mesh DNS on {} ({how})", servers.join(", "));
        match &self.warning {
            Some(w) => format!("{line}; {w}"),
            None => line,
        }
    }
}

/// What `status` says about mesh DNS, from what `up` recorded as set up.
pub fn status(applied: Option<&AppliedDns>) -> DnsStatus {
    match applied {
        None => DnsStatus {
            running: false,
            method: None,
            servers: Vec::new(),
            interface: None,
            hosts_file: None,
            warning: None,
        },
        Some(a) => DnsStatus {
            running: true,
            method: Some(a.method),
            servers: a.servers.clone(),
            interface: Some(a.interface.clone()),
            hosts_file: match a.method {
                DnsMethod::Hosts => Some(
                    a.hosts_file
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(dns::HOSTS_FILE)),
                ),
                _ => None,
            },
            warning: None,
        },
    }
}

/// `wgmesh export --names`: a `# NAME.mesh (hostname)` comment above each `[Peer]` whose key
/// is in `peers`; everything else unchanged (wg-quick ignores comments).
pub fn annotate_export(config: &str, peers: &[PeerInfo]) -> String {
    let lines: Vec<&str> = config.lines().collect();
    let mut out = String::with_capacity(config.len() + peers.len() * 32);
    for (i, line) in lines.iter().enumerate() {
        if line.trim() == "[Peer]" {
            let key = lines[i + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with('['))
                .find_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    (k.trim() == "PublicKey").then(|| v.trim())
                });
            let peer = key.and_then(|k| peers.iter().find(|p| p.public_key.to_base64() == k));
            if let Some(peer) = peer {
                match &peer.dns_name {
                    Some(name) => out.push_str(&format!("# {name}.{ZONE} ({})\n", peer.hostname)),
                    None => out.push_str(&format!("# {}\n", peer.hostname)),
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::dns::resolver::Addresses;

    fn wg0() -> InterfaceName {
        "wg0".parse().unwrap()
    }

    fn servers() -> Vec<IpAddr> {
        vec!["10.100.0.5".parse().unwrap()]
    }

    #[test]
    fn the_wanted_setting_follows_os_and_options() {
        let opts = DnsOptions::default();
        let hosts = DnsOptions {
            hosts: true,
            hosts_file: "/tmp/hosts".into(),
        };
        let w = wanted(TargetOs::Linux, &opts, true, &wg0(), &servers());
        assert_eq!((w.method, w.hosts_file), (DnsMethod::Resolved, None));
        let w = wanted(TargetOs::Linux, &hosts, false, &wg0(), &servers());
        assert_eq!(w.method, DnsMethod::Hosts);
        assert_eq!(w.hosts_file.as_deref(), Some(Path::new("/tmp/hosts")));
        let w = wanted(TargetOs::Linux, &opts, false, &wg0(), &servers());
        assert_eq!(w.method, DnsMethod::Manual);
        assert_eq!(
            wanted(TargetOs::Windows, &hosts, false, &wg0(), &servers()).method,
            DnsMethod::Nrpt
        );
    }

    #[test]
    fn undo_removes_the_setting_and_only_our_hosts_block() {
        let dir = std::env::temp_dir().join(format!("wgmesh-dns-undo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        let mut table = Table::default();
        table.insert(
            &"web".parse().unwrap(),
            Addresses {
                v4: "10.100.0.2".parse().unwrap(),
                v6: None,
            },
        );
        let original = "127.0.0.1 localhost\n";
        let with = dns::hosts_with_block(original, &wg0(), &hosts_entries(&table));
        assert!(with.contains("10.100.0.2\tweb.mesh"), "{with}");
        std::fs::write(&hosts, &with).unwrap();
        let applied = AppliedDns {
            method: DnsMethod::Hosts,
            interface: "wg0".into(),
            servers: servers(),
            hosts_file: Some(hosts.clone()),
        };
        let plan = undo_plan(&applied).unwrap();
        assert_eq!(plan.files.len(), 1);
        assert_eq!(plan.files[0].contents.as_bytes(), original.as_bytes());
        // Resolved: revert the link.
        let resolved = AppliedDns {
            method: DnsMethod::Resolved,
            hosts_file: None,
            ..applied
        };
        assert_eq!(
            undo_plan(&resolved).unwrap().render(),
            "resolvectl revert wg0 || true\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn export_names_each_peer_in_a_comment() {
        let key = crate::keys::PrivateKey::generate().public_key();
        let peer = PeerInfo {
            dns_name: Some("web-2".parse().unwrap()),
            allowed_ips: vec![],
            ..PeerInfo::for_test(key, "Web", 7)
        };
        let config = format!(
            "[Interface]\nPrivateKey = x\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.100.0.7/32\n\n[Peer]\nPublicKey = other\n",
            key.to_base64()
        );
        let out = annotate_export(&config, &[peer]);
        assert_eq!(
            out.matches("# web-2.mesh (Web)\n[Peer]").count(),
            1,
            "{out}"
        );
        assert_eq!(out.lines().count(), config.lines().count() + 1);
    }

    #[test]
    fn status_says_how_names_reach_the_resolver_in_one_short_line() {
        let off = status(None);
        assert!(!off.running && off.method.is_none());
        assert!(off.summary().contains("off"));
        let manual = AppliedDns {
            method: DnsMethod::Manual,
            interface: "wg0".into(),
            servers: servers(),
            hosts_file: None,
        };
        let s = status(Some(&manual));
        assert_eq!(s.method, Some(DnsMethod::Manual));
        assert_eq!(s.servers, servers());
        let line = s.summary();
        assert!(
            line.contains("10.100.0.5") && line.contains("status --help"),
            "{line}"
        );
        assert!(line.len() < 120, "one short line: {line}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["method"], "manual");
        assert_eq!(json["servers"][0], "10.100.0.5");
    }
}
