//! `NAME.mesh` on this node while `wgmesh up` runs: the resolver's table follows each sync,
//! it answers on this node's mesh addresses, and the OS is told to send `.mesh` to it.
//!
//! Only `up` serves DNS: a one-shot `sync` exits at once, so pointing the OS at a resolver
//! that is gone would only make `.mesh` lookups time out. What the OS was told is recorded
//! with the rest of what is applied ([`AppliedDns`]), so the teardown of `up`, `down` after a
//! crash, and a rebuild of the interface remove exactly that.
//!
//! Observe (assignment, peer list, whether systemd-resolved runs, the hosts file), decide
//! ([`wanted`], [`hosts_entries`], pure), apply (plans through the engine's sink).

use super::engine::{Engine, Sink};
use super::error::AgentError;
use super::resolver::{Addresses, Resolver, Table, DNS_PORT, ZONE};
use crate::os::dns::{self, DnsMethod};
use crate::os::{Plan, TargetOs};
use crate::proto::model::PeerInfo;
use crate::types::InterfaceName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The OS side of mesh DNS as set up on this host, so it can be undone exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedDns {
    /// How `.mesh` reaches the resolver.
    pub method: DnsMethod,
    /// The interface the setting hangs on (resolved's link, the NRPT rule's tag).
    pub interface: String,
    /// The resolver's addresses the OS was given.
    pub servers: Vec<IpAddr>,
    /// The hosts file holding our block, for [`DnsMethod::Hosts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
}

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
fn read_hosts(path: &Path) -> Result<String, AgentError> {
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

/// The resolver and the OS setting, kept in step with the agent's syncs by `up`.
pub struct MeshDns {
    options: DnsOptions,
    resolver: Resolver,
    /// Whether we registered again to learn our own name (configs from before names).
    asked_for_name: bool,
    /// Addresses we already warned about not being able to bind, so a retry each sync does not
    /// repeat the warning.
    warned: BTreeSet<SocketAddr>,
    /// Whether systemd-resolved runs, when told rather than observed (tests).
    resolved: Option<bool>,
}

impl MeshDns {
    /// Mesh DNS with these options, serving nowhere until the first [`MeshDns::refresh`].
    pub fn new(options: DnsOptions) -> MeshDns {
        MeshDns {
            options,
            resolver: Resolver::new(),
            asked_for_name: false,
            warned: BTreeSet::new(),
            resolved: None,
        }
    }

    /// Takes whether systemd-resolved runs as given instead of looking (for tests, so the
    /// plan does not depend on the machine running them).
    pub fn assume_resolved(mut self, running: bool) -> MeshDns {
        self.resolved = Some(running);
        self
    }

    /// After a sync: rebuild the table from the peer list, serve on this node's mesh
    /// addresses, and bring the OS setting (and hosts block) to what it should be.
    pub fn refresh(&mut self, engine: &mut Engine, sink: &mut Sink<'_>) -> Result<(), AgentError> {
        let needs_name = engine
            .config
            .assignment
            .as_ref()
            .is_some_and(|a| a.dns_name.is_none());
        if needs_name && !self.asked_for_name {
            // Registered before names existed: registering again (idempotent) tells us ours.
            self.asked_for_name = true;
            engine.register()?;
        }
        let Some(assignment) = engine.config.assignment.clone() else {
            return Ok(());
        };
        let applied = engine
            .config
            .applied
            .as_ref()
            .and_then(|a| a.interface.parse::<InterfaceName>().ok());
        let real_name = match applied {
            Some(name) => name,
            // A dry run records nothing: show the plan for the interface it would create.
            None if sink.is_dry_run() => engine.config.interface.clone(),
            None => return Ok(()),
        };
        let prefix6 = crate::proto::mesh6::prefix(&assignment.server_public_key);
        let own = Addresses {
            v4: assignment.assigned_ip,
            v6: Some(crate::proto::mesh6::address(
                prefix6,
                assignment.assigned_ip,
            )),
        };
        let peers: Vec<PeerInfo> = engine
            .last_list
            .as_ref()
            .map(|k| k.peers.clone())
            .unwrap_or_default();
        let table = Table::build(
            assignment.dns_name.as_ref().map(|n| (n, own)),
            &peers,
            Some(prefix6),
        );
        let servers: Vec<IpAddr> = [IpAddr::V4(own.v4)]
            .into_iter()
            .chain(own.v6.map(IpAddr::V6))
            .collect();

        if !sink.is_dry_run() {
            self.resolver.set_table(table.clone());
            let addrs: Vec<SocketAddr> = servers
                .iter()
                .map(|ip| SocketAddr::new(*ip, DNS_PORT))
                .collect();
            for (addr, e) in self.resolver.serve_on(&addrs) {
                if self.warned.insert(addr) {
                    log::warn!(
                        "DNS: cannot answer on {addr} ({e}); is another DNS server bound to port \
                         {DNS_PORT} on all addresses? Retrying at each sync (--dns off disables)"
                    );
                }
            }
        }

        let want = wanted(
            engine.os,
            &self.options,
            self.resolved.unwrap_or_else(dns::resolved_running),
            &real_name,
            &servers,
        );
        let have = engine.config.applied.as_ref().and_then(|a| a.dns.clone());
        if have.as_ref() != Some(&want) {
            if let Some(old) = &have {
                sink.apply(&undo_plan(old)?)?;
            }
            sink.apply(&dns::on(want.method, &real_name, &want.servers))?;
            match want.method {
                DnsMethod::Manual => log::info!("{}", dns::manual_hint(&want.servers)),
                method => log::info!(".{ZONE} names go to this node's resolver ({method:?})"),
            }
            record(engine, sink, Some(want.clone()))?;
        }
        if let Some(path) = &want.hosts_file {
            let plan =
                dns::hosts_plan(path, &read_hosts(path)?, &real_name, &hosts_entries(&table));
            sink.apply(&plan)?;
        }
        Ok(())
    }

    /// The table answers come from now (for tests and status).
    pub fn table(&self) -> std::sync::Arc<Table> {
        self.resolver.table()
    }

    /// Stops answering (the OS setting is removed by the engine's teardown).
    pub fn shutdown(&mut self) {
        self.resolver.shutdown();
    }
}

/// Records the OS side as applied (never in a dry run) and saves the config.
fn record(engine: &mut Engine, sink: &Sink<'_>, dns: Option<AppliedDns>) -> Result<(), AgentError> {
    if sink.is_dry_run() {
        return Ok(());
    }
    if let Some(applied) = engine.config.applied.as_mut() {
        applied.dns = dns;
        if engine.persist {
            engine.config.save(&engine.config_path)?;
        }
    }
    Ok(())
}

/// What `status` says about mesh DNS: how names reach the resolver, or how to use it.
pub fn describe(applied: Option<&AppliedDns>) -> String {
    match applied {
        None => "mesh DNS: off (runs while `wgmesh up` does; --dns off disables it)".into(),
        Some(a) => {
            let servers: Vec<String> = a.servers.iter().map(IpAddr::to_string).collect();
            let how = match a.method {
                DnsMethod::Resolved => format!("systemd-resolved sends .{ZONE} on {}", a.interface),
                DnsMethod::Hosts => format!(
                    "names also kept in {}",
                    a.hosts_file
                        .as_deref()
                        .unwrap_or(Path::new(dns::HOSTS_FILE))
                        .display()
                ),
                DnsMethod::ResolverFile => format!("{} sends .{ZONE}", dns::MACOS_RESOLVER_FILE),
                DnsMethod::Nrpt => format!("an NRPT rule sends .{ZONE}"),
                DnsMethod::Manual => dns::manual_hint(&a.servers),
            };
            format!("mesh DNS: resolver on {}; {how}", servers.join(", "))
        }
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
            id: crate::types::PeerId::for_key(&key),
            public_key: key,
            virtual_ip: "10.100.0.7".parse().unwrap(),
            endpoint: None,
            hostname: "Web".parse().unwrap(),
            dns_name: Some("web-2".parse().unwrap()),
            os: "linux".parse().unwrap(),
            allowed_ips: vec![],
            exit_node: false,
            online: true,
            last_heartbeat: String::new(),
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

    /// An engine as `up` has it after a sync: registered as `me` (10.100.0.5) with the
    /// interface wg0 applied, and `peers` in its last list. It never talks to a server.
    fn engine(dir: &Path, peers: Vec<PeerInfo>) -> Engine {
        use super::super::client::ApiClient;
        use super::super::config::{Applied, Assignment, ClientConfig};
        let mut config = ClientConfig::generate(wg0());
        let server_key = crate::keys::PrivateKey::generate().public_key();
        config.assignment = Some(Assignment {
            peer_id: crate::types::PeerId::for_key(&config.private_key.public_key()),
            assigned_ip: "10.100.0.5".parse().unwrap(),
            network_cidr: "10.100.0.0/16".parse().unwrap(),
            server_public_key: server_key,
            dns_name: Some("me".parse().unwrap()),
        });
        config.applied = Some(Applied {
            os: "linux".into(),
            interface: "wg0".into(),
            address: Some("10.100.0.5".parse().unwrap()),
            ..Applied::default()
        });
        Engine {
            client: ApiClient::new(
                "http://127.0.0.1:9".parse().unwrap(),
                std::time::Duration::from_secs(1),
            ),
            config,
            config_path: dir.join("client.json"),
            os: TargetOs::Linux,
            reader: None,
            last_list: Some(crate::agent::known::KnownPeers {
                peers,
                ..Default::default()
            }),
            relay_probe: Default::default(),
            persist: true,
            poke: None,
            paths: Default::default(),
            path_settings: Default::default(),
            path_choices: Default::default(),
        }
    }

    fn web() -> PeerInfo {
        let key = crate::keys::PrivateKey::generate().public_key();
        PeerInfo {
            id: crate::types::PeerId::for_key(&key),
            public_key: key,
            virtual_ip: "10.100.0.7".parse().unwrap(),
            endpoint: None,
            hostname: "web".parse().unwrap(),
            dns_name: Some("web".parse().unwrap()),
            os: "linux".parse().unwrap(),
            allowed_ips: vec!["10.100.0.7/32".parse().unwrap()],
            exit_node: false,
            online: true,
            last_heartbeat: String::new(),
        }
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wgmesh-dns-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn with_resolved_the_link_gets_mesh_once_and_teardown_reverts_it() {
        use crate::os::runner::RecordingRunner;
        let dir = temp("resolved");
        let mut engine = engine(&dir, vec![web()]);
        let mut dns = MeshDns::new(DnsOptions::default()).assume_resolved(true);
        let v6 = crate::proto::mesh6::address(
            crate::proto::mesh6::prefix(
                &engine.config.assignment.as_ref().unwrap().server_public_key,
            ),
            "10.100.0.5".parse().unwrap(),
        );
        let mut runner = RecordingRunner::new();
        runner
            .expect(&format!("resolvectl dns wg0 10.100.0.5 {v6}"))
            .expect("resolvectl domain wg0 '~mesh'")
            .expect("resolvectl default-route wg0 false");
        dns.refresh(&mut engine, &mut Sink::Run(&mut runner))
            .unwrap();
        runner.assert_done();
        assert_eq!(dns.table().len(), 2, "web and ourselves");
        let applied = engine.config.applied.as_ref().unwrap().dns.clone().unwrap();
        assert_eq!(applied.method, DnsMethod::Resolved);
        // Saved, so `down` after a crash knows what to undo.
        let saved = std::fs::read_to_string(dir.join("client.json")).unwrap();
        assert!(saved.contains("\"resolved\""), "{saved}");
        // Nothing changed: nothing runs (the runner panics on any command).
        let mut quiet = RecordingRunner::new();
        dns.refresh(&mut engine, &mut Sink::Run(&mut quiet))
            .unwrap();
        // Teardown reverts the link before the interface goes.
        let mut down = RecordingRunner::new();
        down.expect("resolvectl revert wg0")
            .expect("ip link delete dev wg0");
        assert!(engine.teardown(&mut Sink::Run(&mut down)).unwrap());
        down.assert_done();
        dns.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_hosts_block_follows_the_peer_list_and_teardown_restores_the_file() {
        use crate::os::runner::{RecordingRunner, SystemRunner};
        let dir = temp("hosts");
        let hosts = dir.join("hosts");
        let original = "127.0.0.1\tlocalhost\n";
        std::fs::write(&hosts, original).unwrap();
        let mut engine = engine(&dir, vec![web()]);
        let options = DnsOptions {
            hosts: true,
            hosts_file: hosts.clone(),
        };
        let mut dns = MeshDns::new(options).assume_resolved(false);
        // Hosts and manual methods run no command: only the file is written.
        dns.refresh(&mut engine, &mut Sink::Run(&mut SystemRunner::new()))
            .unwrap();
        let text = std::fs::read_to_string(&hosts).unwrap();
        assert!(text.starts_with(original), "{text}");
        assert!(text.contains("10.100.0.7\tweb.mesh\n"), "{text}");
        assert!(text.contains("10.100.0.5\tme.mesh\n"), "{text}");
        // Same list: the file is not rewritten (the recording runner refuses any write).
        let mut quiet = RecordingRunner::new();
        dns.refresh(&mut engine, &mut Sink::Run(&mut quiet))
            .unwrap();
        // web leaves: its lines go.
        engine.last_list = Some(Default::default());
        dns.refresh(&mut engine, &mut Sink::Run(&mut SystemRunner::new()))
            .unwrap();
        let text = std::fs::read_to_string(&hosts).unwrap();
        assert!(
            !text.contains("web.mesh") && text.contains("me.mesh"),
            "{text}"
        );
        // Teardown gives back the file as it was.
        let mut down = RecordingRunner::new();
        let restore = crate::os::dns::hosts_plan(&hosts, &text, &wg0(), &[]);
        down.expect_write(&restore.files[0].render())
            .expect("ip link delete dev wg0");
        engine.teardown(&mut Sink::Run(&mut down)).unwrap();
        assert_eq!(down.written[0].1, original.as_bytes());
        dns.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_says_how_names_reach_the_resolver() {
        assert!(describe(None).contains("off"));
        let manual = AppliedDns {
            method: DnsMethod::Manual,
            interface: "wg0".into(),
            servers: servers(),
            hosts_file: None,
        };
        let text = describe(Some(&manual));
        assert!(
            text.contains("10.100.0.5") && text.contains("dig @10.100.0.5"),
            "{text}"
        );
    }
}
