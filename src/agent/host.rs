//! Host observation: everything the agent reads from the machine before deciding, gathered
//! into one [`HostFacts`] so the decision ([`super::plan`]) is a pure function of data.
//!
//! Reads go through a [`Runner`] like every command, so tests script them; without a reader
//! (planning another OS's commands) nothing is read and every fact is unknown.

use super::client::ServerUrl;
use super::config::ClientConfig;
use super::engine::AgentError;
use crate::os::runner::Runner;
use crate::os::wgdump::{self, Dump};
use crate::os::{self, Command, TargetOs};
use crate::types::{Hostname, InterfaceName};
use std::net::{IpAddr, Ipv4Addr};

/// What the host looks like right now, as far as one sync needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `wg show NAME dump` of the interface recorded as applied (or the configured one);
    /// `None` when it does not exist or cannot be read.
    pub dump: Option<Dump>,
    /// The IPv4 default gateway (read only when an exit node is chosen: macOS and Windows pin
    /// routes to it).
    pub gateway: Option<Ipv4Addr>,
    /// The interface of the IPv4 default route (read only for an exit node's NAT).
    pub default_dev: Option<String>,
    /// Whether `nft` is installed (read only for an exit node's NAT).
    pub nft: bool,
    /// The interface of the IPv6 default route, if this host has one (exit node only).
    pub ipv6_default_dev: Option<String>,
    /// The coordination server's address when its URL names or resolves to one (only when
    /// an exit node is chosen: it must stay outside the full tunnel).
    pub server_ip: Option<IpAddr>,
    /// macOS: the real `utunN` name of the interface just created, from wireguard-go's
    /// name file. Set between the two planning passes, see
    /// [`super::plan::SyncPlan::awaiting_name`].
    pub created_name: Option<InterfaceName>,
}

impl HostFacts {
    /// Reads what a sync of `config` on `os` needs, and nothing more.
    pub fn observe(
        mut reader: Option<&mut dyn Runner>,
        os: TargetOs,
        config: &ClientConfig,
        server: &ServerUrl,
    ) -> HostFacts {
        let interface = super::plan::interface_to_read(config, os);
        let mut facts = HostFacts {
            dump: reader
                .as_deref_mut()
                .and_then(|r| wg_dump(r, os, &interface)),
            ..HostFacts::default()
        };
        if config.use_exit_node.is_some() {
            facts.server_ip = server_ip(server);
            facts.gateway = match os {
                TargetOs::Linux => read(&mut reader, "ip", &["-4", "route", "show", "default"])
                    .and_then(|out| word_after(&out, "via")),
                TargetOs::Macos => read(&mut reader, "route", &["-n", "get", "default"])
                    .and_then(|out| word_after(&out, "gateway:")),
                TargetOs::Windows => None,
            }
            .and_then(|g| g.parse().ok());
        }
        if config.exit_node {
            facts.default_dev = read(&mut reader, "ip", &["-4", "route", "show", "default"])
                .and_then(|out| word_after(&out, "dev"));
            facts.nft = read(&mut reader, "nft", &["--version"]).is_some();
            facts.ipv6_default_dev = ipv6_default_dev(reader);
        }
        facts
    }
}

/// Runs a read-only command through the reader, returning its stdout.
fn read(reader: &mut Option<&mut dyn Runner>, program: &str, args: &[&str]) -> Option<String> {
    let reader = reader.as_deref_mut()?;
    reader
        .run(&Command::new(program).args(args.iter().copied()))
        .ok()
        .map(|o| o.stdout)
}

/// Reads `wg show NAME dump` with `os`'s `wg`; `None` when the interface does not exist or
/// the output cannot be parsed (logged).
pub fn wg_dump(reader: &mut dyn Runner, os: TargetOs, name: &InterfaceName) -> Option<Dump> {
    let cmd = Command::new(os::wg_program(os)).args(["show", name.as_str(), "dump"]);
    match reader.run(&cmd) {
        Ok(out) => match wgdump::parse(&out.stdout) {
            Ok(dump) => Some(dump),
            Err(e) => {
                log::warn!("cannot parse `wg show {name} dump`: {e}");
                None
            }
        },
        Err(e) => {
            log::debug!("interface {name} is not up: {e}");
            None
        }
    }
}

/// The interface of the IPv6 default route, if this host has one.
pub fn ipv6_default_dev(mut reader: Option<&mut dyn Runner>) -> Option<String> {
    read(&mut reader, "ip", &["-6", "route", "show", "default"])
        .and_then(|out| word_after(&out, "dev"))
}

/// The kernel's name for interface `name` just created on macOS: the `utunN` wireguard-go
/// wrote to its name file.
pub fn created_name(name: &InterfaceName) -> Result<InterfaceName, AgentError> {
    let file = os::macos_name_file(name);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        AgentError::Usage(format!(
            "wireguard-go did not write {}: {e}",
            file.display()
        ))
    })?;
    os::parse_name_file(&text).map_err(|e| AgentError::Usage(format!("{}: {e}", file.display())))
}

/// The coordination server's address, when its URL names one directly or resolves to an
/// IPv4 address.
fn server_ip(server: &ServerUrl) -> Option<IpAddr> {
    let authority = server.authority();
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(authority, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse().ok().or_else(|| {
        use std::net::ToSocketAddrs;
        (host, 0)
            .to_socket_addrs()
            .ok()?
            .find(|a| a.is_ipv4())
            .map(|a| a.ip())
    })
}

/// Our hostname: the configured one, else the OS's, else "wgmesh-node".
pub fn local_hostname(config: &ClientConfig) -> Hostname {
    if let Some(h) = &config.hostname {
        return h.clone();
    }
    let candidates = [
        std::env::var("HOSTNAME").ok(),
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        std::fs::read_to_string("/etc/hostname").ok(),
        std::env::var("COMPUTERNAME").ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .find_map(|h| h.trim().parse().ok())
        .unwrap_or_else(|| "wgmesh-node".parse().expect("literal"))
}

/// The word following `key` in command output (`via X`, `dev X`, `gateway: X`).
fn word_after(text: &str, key: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == key)?;
    words.next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_after_reads_route_output() {
        let out = "default via 198.18.0.254 dev eth0 proto static\n";
        assert_eq!(word_after(out, "via").as_deref(), Some("198.18.0.254"));
        assert_eq!(word_after(out, "dev").as_deref(), Some("eth0"));
        assert_eq!(word_after("", "dev"), None);
    }
}
