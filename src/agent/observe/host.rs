//! Host observation: everything the agent reads from the machine before deciding, gathered
//! into one [`HostFacts`] so the decision ([`crate::agent::plan`]) is a pure function of data.
//!
//! Reads go through a [`Runner`] like every command, so tests script them; without a reader
//! (planning another OS's commands) nothing is read and every fact is unknown.

use crate::agent::client::ServerUrl;
use crate::agent::error::AgentError;
use crate::agent::observe::host_routes;
use crate::agent::state::config::ClientConfig;
use crate::os::route_table::RouteTable;
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
    /// Linux: the IPv4 default gateway (read only when an exit node is chosen; recorded, not
    /// used: the fwmark keeps WireGuard's packets outside). macOS and Windows pin through the
    /// uplink found in [`HostFacts::routes`] instead.
    pub gateway: Option<Ipv4Addr>,
    /// macOS and Windows: the IPv4 routing table (`netstat -rn -f inet`, `route print -4`),
    /// read every sync, so the full tunnel's routes are planned from what the OS has now
    /// (a reboot or a network change may have taken them), not from what was saved.
    pub routes: Option<RouteTable>,
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
    /// name file; set between the two planning passes (the plan's `awaiting_name`).
    pub created_name: Option<InterfaceName>,
    /// macOS, when an interface is recorded as applied: whether that `utunN` is still ours
    /// (wg-quick's name-file and socket check); a rebuild leaves one that is not alone.
    pub utun_ours: Option<bool>,
    /// macOS, when the interface may be (re)created: the MTU of the default route's
    /// interface (`ifconfig`), for darwin.bash's automatic tunnel MTU.
    pub uplink_mtu: Option<u16>,
}

impl HostFacts {
    /// Reads what a sync of `config` on `os` needs, and nothing more; `interface` is the
    /// one whose `wg show dump` matters (the plan's `interface_to_read`).
    pub fn observe(
        mut reader: Option<&mut dyn Runner>,
        os: TargetOs,
        config: &ClientConfig,
        server: &ServerUrl,
        interface: &InterfaceName,
    ) -> HostFacts {
        let mut facts = HostFacts {
            dump: reader
                .as_deref_mut()
                .and_then(|r| wg_dump(r, os, interface)),
            ..HostFacts::default()
        };
        if config.use_exit_node.is_some() {
            facts.server_ip = server_ip(server);
            if os == TargetOs::Linux {
                facts.gateway = read(&mut reader, "ip", &["-4", "route", "show", "default"])
                    .and_then(|out| word_after(&out, "via"))
                    .and_then(|g| g.parse().ok());
            }
        }
        facts.routes = routes(&mut reader, os, config);
        // Only a rebuild needs it: when the interface does not show our key.
        let ours = Some(config.private_key.public_key());
        if facts.dump.as_ref().map(|d| d.interface.public_key) != Some(ours) {
            facts.utun_ours = utun_ours(&mut reader, os, config);
            if os == TargetOs::Macos && config.mtu.is_none() {
                facts.uplink_mtu = uplink_mtu(&mut reader, facts.routes.as_ref());
            }
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

/// What [`crate::agent::run::engine::Engine::check_routes`] needs between syncs: the routing table and
/// the server's address, nothing else.
pub fn observe_routes(
    mut reader: Option<&mut dyn Runner>,
    os: TargetOs,
    config: &ClientConfig,
    server: &ServerUrl,
) -> HostFacts {
    HostFacts {
        routes: routes(&mut reader, os, config),
        server_ip: config
            .use_exit_node
            .as_ref()
            .and_then(|_| server_ip(server)),
        ..HostFacts::default()
    }
}

/// The routing table on macOS and Windows; a failure to read it is logged and leaves the
/// routes unchecked this time (as without a reader, when planning for another OS).
fn routes(
    reader: &mut Option<&mut dyn Runner>,
    os: TargetOs,
    config: &ClientConfig,
) -> Option<RouteTable> {
    if !host_routes::uses_host_routes(os) {
        return None;
    }
    // The tunnel as the IPv6 table names it: `utunN`, the Windows interface alias.
    let tunnel = config
        .applied
        .as_ref()
        .filter(|a| a.os == os.as_str())
        .map(|a| a.interface.as_str());
    match host_routes::observe(os, reader.as_deref_mut()?, tunnel) {
        Ok(table) => Some(table),
        Err(e) => {
            log::warn!(
                "cannot read the routing table: {e}; full-tunnel routes are not checked this time"
            );
            None
        }
    }
}

/// macOS: whether the `utunN` recorded as applied is still ours; `None` elsewhere, when
/// nothing is recorded, or without a reader.
pub fn utun_ours(
    reader: &mut Option<&mut dyn Runner>,
    os: TargetOs,
    config: &ClientConfig,
) -> Option<bool> {
    let applied = config.applied.as_ref().filter(|a| a.os == "macos")?;
    if os != TargetOs::Macos {
        return None;
    }
    let utun: InterfaceName = applied.interface.parse().ok()?;
    Some(os::observe_macos::check_utun_owner(
        reader.as_deref_mut()?,
        &config.interface,
        &utun,
    ))
}

/// macOS: the MTU of the interface the default route leaves through, as darwin.bash's
/// `set_mtu` finds it (`netstat` for the interface, `ifconfig` for its MTU).
fn uplink_mtu(reader: &mut Option<&mut dyn Runner>, table: Option<&RouteTable>) -> Option<u16> {
    let iface = table?.default_route("")?.iface.clone();
    let out = reader
        .as_deref_mut()?
        .run(&os::observe_macos::ifconfig_command(&iface))
        .ok()?;
    os::observe_macos::parse_ifconfig_mtu(&out.stdout)
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
/// IPv4 address: the lowest of them, because getaddrinfo rotates the order of a name's
/// several A records between calls, and a different address every sync would move the
/// server's pin every sync.
pub fn server_ip(server: &ServerUrl) -> Option<IpAddr> {
    let authority = server.authority();
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(authority, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse().ok().or_else(|| {
        use std::net::ToSocketAddrs;
        lowest_ipv4((host, 0).to_socket_addrs().ok()?.map(|a| a.ip()))
    })
}

/// The lowest IPv4 address among `resolved`, whatever order the resolver gave them in.
fn lowest_ipv4(resolved: impl Iterator<Item = IpAddr>) -> Option<IpAddr> {
    resolved.filter(IpAddr::is_ipv4).min()
}

/// Our hostname: the configured one, else the OS's (see [`os_hostname`]), else
/// "wgmesh-node".
pub fn local_hostname(config: &ClientConfig) -> Hostname {
    if let Some(h) = &config.hostname {
        return h.clone();
    }
    os_hostname().unwrap_or_else(|| "wgmesh-node".parse().expect("literal"))
}

/// The OS's own name for this machine, from the one call every OS answers the same way
/// (`gethostname(3)` on Linux and macOS, `GetComputerNameExW` on Windows, through the
/// `gethostname` crate) — not `/proc` or `/etc/hostname`, which macOS and Windows lack, so
/// every Mac used to register as `wgmesh-node` and `--use-exit-node NAME` became ambiguous.
pub fn os_hostname() -> Option<Hostname> {
    hostname_from(&gethostname::gethostname().to_string_lossy())
}

/// Turns what the OS calls this machine into a registrable [`Hostname`]: taken as it is when
/// valid (`Johns-MacBook-Pro.local`, `DESKTOP-4F1K2Q7`), otherwise with each character a
/// hostname may not contain replaced by `-` (`John's Mac` -> `John-s-Mac`); `None` when
/// nothing usable is left.
pub fn hostname_from(raw: &str) -> Option<Hostname> {
    let raw = raw.trim().trim_end_matches('\0');
    if let Ok(h) = raw.parse() {
        return Some(h);
    }
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c| c == '-' || c == '.');
    cleaned.chars().take(63).collect::<String>().parse().ok()
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
    fn the_os_hostname_is_what_the_os_call_returns() {
        // On this (Linux) host the crate's answer must match the kernel's own record.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("Linux exposes the hostname in /proc");
        let ours = os_hostname().expect("the test host has a usable hostname");
        assert_eq!(ours.as_str(), kernel.trim());
    }

    #[test]
    fn os_names_are_made_registrable() {
        let h = |s: &str| hostname_from(s).map(|h| h.as_str().to_string());
        assert_eq!(
            h("Johns-MacBook-Pro.local").as_deref(),
            Some("Johns-MacBook-Pro.local")
        );
        assert_eq!(h("DESKTOP-4F1K2Q7").as_deref(), Some("DESKTOP-4F1K2Q7"));
        assert_eq!(h("John's Mac").as_deref(), Some("John-s-Mac"));
        assert_eq!(h("  node1\n").as_deref(), Some("node1"));
        assert_eq!(h(""), None);
        assert_eq!(h("???"), None);
    }

    #[test]
    fn a_rotating_resolver_answer_gives_the_same_server_address() {
        let a: Vec<IpAddr> = ["198.18.0.9", "2001:db8::1", "198.18.0.3", "198.18.0.5"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut rotated = a.clone();
        rotated.rotate_left(2);
        let want: IpAddr = "198.18.0.3".parse().unwrap();
        assert_eq!(lowest_ipv4(a.into_iter()), Some(want));
        assert_eq!(lowest_ipv4(rotated.into_iter()), Some(want));
        assert_eq!(lowest_ipv4(["::1".parse().unwrap()].into_iter()), None);
    }

    #[test]
    fn word_after_reads_route_output() {
        let out = "default via 198.18.0.254 dev eth0 proto static\n";
        assert_eq!(word_after(out, "via").as_deref(), Some("198.18.0.254"));
        assert_eq!(word_after(out, "dev").as_deref(), Some("eth0"));
        assert_eq!(word_after("", "dev"), None);
    }
}
