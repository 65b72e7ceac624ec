//! Mesh DNS while `wgmesh up` runs: the resolver's table rebuilt after each sync, answering
//! on this node's mesh addresses, and the OS setting (and hosts block) brought to what
//! [`crate::agent::dns::wanted`] says. The decisions are pure, in [`crate::agent::dns`]; this is the edge
//! that holds the resolver's sockets and records what is applied through the engine.

use crate::agent::dns::resolver::{Addresses, Resolver, Table, DNS_PORT, ZONE};
use crate::agent::dns::{hosts_entries, read_hosts, undo_plan, wanted, DnsOptions};
use crate::agent::error::AgentError;
use crate::agent::run::engine::{Engine, Sink};
use crate::agent::state::config::AppliedDns;
use crate::os::dns::{self, DnsMethod};
use crate::proto::model::PeerInfo;
use crate::types::InterfaceName;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

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
            self.resolver
                .set_device_interface(engine.config.gateway.as_ref().map(|g| g.interface.as_str()));
            self.resolver.set_mesh_interface(real_name.as_str());
            let addrs: Vec<SocketAddr> = servers
                .iter()
                .map(|ip| SocketAddr::new(*ip, DNS_PORT))
                .collect();
            for (addr, e) in self.resolver.serve_on(&addrs) {
                if self.warned.insert(addr) {
                    log::warn!("DNS: cannot answer on {addr} ({e}); {}", bind_hint(&e));
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
                method => log::info!(
                    ".{ZONE} names go to this node's resolver ({})",
                    serde_json::to_value(method)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
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

/// The likely cause of a failed bind of the resolver's port, in words: a missing privilege
/// is not another DNS server.
fn bind_hint(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "port {DNS_PORT} needs root or CAP_NET_BIND_SERVICE (under systemd: add it to \
             CapabilityBoundingSet=, as etc/wgmesh.service does). Retrying at each sync \
             (--dns off disables)"
        ),
        std::io::ErrorKind::AddrInUse => format!(
            "another DNS server is bound to port {DNS_PORT} on all addresses (dnsmasq, bind): \
             make it bind only the addresses it serves. Retrying at each sync (--dns off \
             disables)"
        ),
        _ => "retrying at each sync (--dns off disables)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::TargetOs;
    use std::path::{Path, PathBuf};

    #[test]
    fn a_refused_bind_blames_the_missing_privilege_not_another_server() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let hint = bind_hint(&denied);
        assert!(hint.contains("CAP_NET_BIND_SERVICE"), "{hint}");
        assert!(!hint.contains("another DNS server"), "{hint}");
        let busy = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert!(bind_hint(&busy).contains("another DNS server"));
    }

    fn wg0() -> InterfaceName {
        "wg0".parse().unwrap()
    }

    /// An engine as `up` has it after a sync: registered as `me` (10.100.0.5) with the
    /// interface wg0 applied, and `peers` in its last list. It never talks to a server.
    fn engine(dir: &Path, peers: Vec<PeerInfo>) -> Engine {
        use crate::agent::client::ApiClient;
        use crate::agent::state::config::{Applied, Assignment, ClientConfig};
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
            last_list: Some(crate::agent::state::known::KnownPeers {
                peers,
                ..Default::default()
            }),
            relay_probe: Default::default(),
            persist: true,
            device_routes: Vec::new(),
            poke: None,
            paths: Default::default(),
            path_settings: Default::default(),
            path_choices: Default::default(),
        }
    }

    fn web() -> PeerInfo {
        PeerInfo {
            dns_name: Some("web".parse().unwrap()),
            ..PeerInfo::for_test(crate::keys::PrivateKey::generate().public_key(), "web", 7)
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
}
