//! The gateway's plans, pure: its devices' interface, one WireGuard peer and one route per
//! device address, forwarding, the devices' own routing table for subnet routes, and an
//! nftables table of its own that forwards a device's traffic only to what the access
//! policy lets the device reach (the device's own WireGuard app enforces nothing).
//!
//! Subnet routes granted to devices are routed by policy routing, not in the main table:
//! packets from the mesh's addresses (the devices') look up the devices' table first
//! ([`route_table`], priority [`RULE_PREF`], see [`table_rules`]) and fall through to the
//! main table for everything else. So a gateway without `--accept-routes` carries its devices to the parts
//! of routes granted to them without routing its own traffic there (which the subnet router
//! would drop, and which `--accept-routes` keeps off by default so a node on a LAN with the
//! same prefix is not cut off).

use crate::os::{self, Command, Payload, PeerChanges, PeerSpec, Plan, Secret, TargetOs};
use crate::proto::devices::GatewayDevice;
use crate::types::InterfaceName;
use ipnet::IpNet;
use std::collections::BTreeSet;

/// What the gateway needs to know to configure its devices.
#[derive(Debug, Clone)]
pub struct GatewayFacts<'a> {
    /// The devices' interface.
    pub interface: &'a InterfaceName,
    /// The mesh interface (devices' mesh traffic leaves through it).
    pub mesh_interface: &'a str,
    /// This node's own mesh addresses (its resolver answers devices there).
    pub own: &'a [IpNet],
    /// Whether this node is an exit node (devices may then reach the internet through it).
    pub exit_node: bool,
    /// The devices behind this node, with what each may reach.
    pub devices: &'a [GatewayDevice],
}

/// The priority of the rules sending the devices' traffic to [`route_table`]: before the
/// main table (32766) and the full tunnel's rules (added below 32766 without a priority).
pub const RULE_PREF: u32 = 5210;

/// The kernel routing table of the devices' subnet routes: numbered by the gateway's UDP
/// port, so two gateways on one host (which need two ports) never share one.
pub fn route_table(port: u16) -> u32 {
    u32::from(port)
}

/// The policy rules sending what comes from the mesh's networks (`mesh`: the devices'
/// addresses are in them) to the devices' table first; with `mesh` empty, only the removal
/// of any earlier rules and routes. By source rather than by incoming interface, so the
/// reverse-path check of a reply (looked up from the device's address) finds the same
/// route back through the mesh interface and passes also with strict `rp_filter`. The
/// gateway's own traffic is unaffected (its source is chosen after its lookup, from the
/// main table). Removal and IPv6 tolerate failures (IPv6 may be off).
pub fn table_rules(port: u16, mesh: &[IpNet]) -> Plan {
    let table = route_table(port).to_string();
    let pref = RULE_PREF.to_string();
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        out.push(
            Command::new("ip")
                .args([family, "rule", "del", "pref", &pref, "lookup", &table])
                .tolerate_failure(),
        );
        out.push(
            Command::new("ip")
                .args([family, "route", "flush", "table", table.as_str()])
                .tolerate_failure(),
        );
        for net in mesh.iter().filter(|n| self::family(n) == family) {
            let net = net.trunc().to_string();
            let add = Command::new("ip").args([
                family, "rule", "add", "pref", &pref, "from", &net, "lookup", &table,
            ]);
            out.push(match family {
                "-6" => add.tolerate_failure(),
                _ => add,
            });
        }
    }
    Plan::of(out)
}

/// The devices' subnet routes in their table: each granted part served by another node, into
/// the mesh interface (its router's AllowedIPs carry it there), and parts no longer granted
/// removed.
pub fn device_routes(
    mesh_interface: &str,
    port: u16,
    had: &BTreeSet<IpNet>,
    want: &BTreeSet<IpNet>,
) -> Plan {
    let table = route_table(port).to_string();
    let mut out = Vec::new();
    for (nets, verb) in [
        (want.difference(had), "replace"),
        (had.difference(want), "del"),
    ] {
        for net in nets {
            let net_text = net.to_string();
            let cmd = Command::new("ip").args([
                family(net),
                "route",
                verb,
                net_text.as_str(),
                "dev",
                mesh_interface,
                "table",
                table.as_str(),
            ]);
            out.push(match verb {
                "del" => cmd.tolerate_failure(),
                _ => cmd,
            });
        }
    }
    Plan::of(out)
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "-4",
        IpNet::V6(_) => "-6",
    }
}

/// The nftables table of a gateway's devices' interface.
pub fn table_name(interface: &InterfaceName) -> String {
    format!("wgmesh-gw-{}", interface.as_str())
}

/// Creates the devices' interface with this node's key on `port`, brings it up and turns on
/// forwarding. A leftover interface of a crashed run is deleted first, so the state is
/// exactly what this run sets up.
pub fn create(interface: &InterfaceName, port: u16, key: &crate::keys::PrivateKey) -> Plan {
    let name = interface.as_str();
    let mut plan = Plan::of(vec![Command::new("ip")
        .args(["link", "delete", "dev", name])
        .tolerate_failure()]);
    plan.extend(os::create(TargetOs::Linux, interface));
    plan.extend(Plan::of(vec![
        Command::new("wg")
            .args([
                "set",
                name,
                "private-key",
                "/dev/stdin",
                "listen-port",
                &port.to_string(),
            ])
            .stdin(Payload::Secret(Secret::private_key(key))),
        Command::new("ip").args(["link", "set", "up", "dev", name]),
        Command::new("sysctl").args(["-q", "net.ipv4.ip_forward=1"]),
        Command::new("sysctl").args(["-q", "net.ipv6.conf.all.forwarding=1"]),
    ]));
    plan
}

/// Each device as the gateway's WireGuard knows it: its mesh addresses, no endpoint (the
/// device dials in; WireGuard learns where from) and no keepalive (the device sends them).
pub fn device_peers(devices: &[GatewayDevice]) -> Vec<PeerSpec> {
    devices
        .iter()
        .map(|d| PeerSpec {
            public_key: d.public_key,
            endpoint: None,
            allowed_ips: d.addresses.clone(),
            persistent_keepalive: None,
        })
        .collect()
}

/// The peer changes, then routes: each device address routed into the devices' interface
/// (more specific than the mesh network on the mesh interface), and routes of devices gone
/// removed. Removing a peer is what ends a removed device's access at once.
pub fn update(
    interface: &InterfaceName,
    changes: &PeerChanges,
    had: &BTreeSet<IpNet>,
    want: &BTreeSet<IpNet>,
) -> Plan {
    let name = interface.as_str();
    let mut plan = os::apply_peers(TargetOs::Linux, interface, changes);
    let mut routes = Vec::new();
    for net in want.difference(had) {
        let net_text = net.to_string();
        routes.push(Command::new("ip").args([
            family(net),
            "route",
            "replace",
            net_text.as_str(),
            "dev",
            name,
        ]));
    }
    for net in had.difference(want) {
        let net_text = net.to_string();
        routes.push(
            Command::new("ip")
                .args([family(net), "route", "del", net_text.as_str(), "dev", name])
                .tolerate_failure(),
        );
    }
    plan.extend(Plan::of(routes));
    plan
}

/// A device's granted parts of subnet routes.
fn routed(d: &GatewayDevice) -> Vec<IpNet> {
    d.routes.iter().map(|r| r.prefix.trunc()).collect()
}

/// `{ a, b }` of the nets of one family (addresses for host routes, prefixes otherwise).
fn set(nets: &[IpNet], v6: bool) -> Option<String> {
    let items: Vec<String> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V6(_)) == v6)
        .map(|n| match n.prefix_len() == n.max_prefix_len() {
            true => n.addr().to_string(),
            false => n.to_string(),
        })
        .collect();
    (!items.is_empty()).then(|| format!("{{ {} }}", items.join(", ")))
}

/// The rules of one device: what it may send (to what it may reach; DNS to this node), and
/// what may start talking to it (the same peers: the policy is symmetric).
fn device_rules(
    facts: &GatewayFacts<'_>,
    d: &GatewayDevice,
    forward: &mut Vec<String>,
    input: &mut Vec<String>,
) {
    let gw = facts.interface.as_str();
    let mesh = facts.mesh_interface;
    for v6 in [false, true] {
        let proto = if v6 { "ip6" } else { "ip" };
        let Some(me) = set(&d.addresses, v6) else {
            continue;
        };
        if let Some(reach) = set(&d.reach, v6) {
            // No output interface named: a device it may reach can sit behind this gateway
            // too (out through the devices' interface again) or elsewhere (the mesh's).
            forward.push(format!(
                "iifname \"{gw}\" {proto} saddr {me} {proto} daddr {reach} accept"
            ));
            forward.push(format!(
                "oifname \"{gw}\" {proto} daddr {me} {proto} saddr {reach} accept"
            ));
            let to_me: Vec<&IpNet> = facts
                .own
                .iter()
                .filter(|o| d.reach.contains(o) && matches!(o, IpNet::V6(_)) == v6)
                .collect();
            if !to_me.is_empty() {
                input.push(format!("iifname \"{gw}\" {proto} saddr {me} accept"));
            }
        }
        if let Some(parts) = set(&routed(d), v6) {
            // Granted parts of subnet routes: out to their router (or this node's LAN);
            // replies come back as established. The router enforces the same grants.
            forward.push(format!(
                "iifname \"{gw}\" {proto} saddr {me} {proto} daddr {parts} accept"
            ));
        }
        if facts.exit_node {
            forward.push(format!(
                "iifname \"{gw}\" oifname != {{ \"{gw}\", \"{mesh}\" }} {proto} saddr {me} accept"
            ));
        }
    }
}

/// The whole nftables table, loaded as one atomic replacement (declare, delete, define).
pub fn ruleset(facts: &GatewayFacts<'_>) -> String {
    let table = table_name(facts.interface);
    let gw = facts.interface.as_str();
    let (mut forward, mut input) = (Vec::new(), Vec::new());
    forward.push(format!(
        "oifname \"{gw}\" ct state established,related accept"
    ));
    forward.push(format!(
        "iifname \"{gw}\" ct state established,related accept"
    ));
    input.push(format!(
        "iifname \"{gw}\" ct state established,related accept"
    ));
    // Every device may ask this node's resolver (its configuration's DNS).
    input.push(format!("iifname \"{gw}\" udp dport 53 accept"));
    input.push(format!("iifname \"{gw}\" tcp dport 53 accept"));
    for d in facts.devices {
        device_rules(facts, d, &mut forward, &mut input);
    }
    forward.push(format!("iifname \"{gw}\" drop"));
    forward.push(format!("oifname \"{gw}\" drop"));
    input.push(format!("iifname \"{gw}\" drop"));
    let body = |rules: &[String]| {
        rules
            .iter()
            .map(|r| format!("\t\t{r}\n"))
            .collect::<String>()
    };
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {}\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         {}\
         \t}}\n\
         }}\n",
        body(&forward),
        body(&input)
    )
}

/// Loads a ruleset.
pub fn load(ruleset: String) -> Plan {
    Plan::of(vec![Command::new("nft")
        .args(["-f", "/dev/stdin"])
        .stdin(Payload::Text(ruleset))])
}

/// Removes the devices' interface (its peers and routes go with it), its nftables table,
/// and its policy rules and routing table.
pub fn teardown(interface: &InterfaceName, port: u16) -> Plan {
    let commands = vec![
        Command::new("nft")
            .args(["delete", "table", "inet", &table_name(interface)])
            .tolerate_failure(),
        Command::new("ip")
            .args(["link", "delete", "dev", interface.as_str()])
            .tolerate_failure(),
    ];
    let mut plan = Plan::of(commands);
    plan.extend(table_rules(port, &[]));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PublicKey;
    use crate::proto::devices::DeviceRoute;
    use crate::types::PeerId;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn phone() -> GatewayDevice {
        let key = PublicKey::from_bytes([9; 32]);
        GatewayDevice {
            id: PeerId::for_key(&key),
            name: "phone".into(),
            public_key: key,
            addresses: nets(&["10.100.0.9/32", "fd00::a64:9/128"]),
            reach: nets(&["10.100.0.2/32", "fd00::a64:2/128", "10.100.0.3/32"]),
            routes: ["198.18.5.10/32", "198.18.6.0/24"]
                .iter()
                .map(|n| DeviceRoute {
                    prefix: n.parse().unwrap(),
                    router: PeerId::for_key(&PublicKey::from_bytes([3; 32])),
                })
                .collect(),
        }
    }

    #[test]
    fn the_ruleset_forwards_a_device_only_to_what_it_may_reach() {
        let iface: InterfaceName = "wg0d".parse().unwrap();
        let own = nets(&["10.100.0.2/32", "fd00::a64:2/128"]);
        let devices = [phone()];
        let facts = GatewayFacts {
            interface: &iface,
            mesh_interface: "wg0",
            own: &own,
            exit_node: false,
            devices: &devices,
        };
        let text = ruleset(&facts);
        let expected = "table inet wgmesh-gw-wg0d\n\
            delete table inet wgmesh-gw-wg0d\n\
            table inet wgmesh-gw-wg0d {\n\
            \tchain forward {\n\
            \t\ttype filter hook forward priority filter; policy accept;\n\
            \t\toifname \"wg0d\" ct state established,related accept\n\
            \t\tiifname \"wg0d\" ct state established,related accept\n\
            \t\tiifname \"wg0d\" ip saddr { 10.100.0.9 } ip daddr { 10.100.0.2, 10.100.0.3 } accept\n\
            \t\toifname \"wg0d\" ip daddr { 10.100.0.9 } ip saddr { 10.100.0.2, 10.100.0.3 } accept\n\
            \t\tiifname \"wg0d\" ip saddr { 10.100.0.9 } ip daddr { 198.18.5.10, 198.18.6.0/24 } accept\n\
            \t\tiifname \"wg0d\" ip6 saddr { fd00::a64:9 } ip6 daddr { fd00::a64:2 } accept\n\
            \t\toifname \"wg0d\" ip6 daddr { fd00::a64:9 } ip6 saddr { fd00::a64:2 } accept\n\
            \t\tiifname \"wg0d\" drop\n\
            \t\toifname \"wg0d\" drop\n\
            \t}\n\
            \tchain input {\n\
            \t\ttype filter hook input priority filter; policy accept;\n\
            \t\tiifname \"wg0d\" ct state established,related accept\n\
            \t\tiifname \"wg0d\" udp dport 53 accept\n\
            \t\tiifname \"wg0d\" tcp dport 53 accept\n\
            \t\tiifname \"wg0d\" ip saddr { 10.100.0.9 } accept\n\
            \t\tiifname \"wg0d\" ip6 saddr { fd00::a64:9 } accept\n\
            \t\tiifname \"wg0d\" drop\n\
            \t}\n\
            }\n";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn devices_become_peers_and_routes_and_leave_as_both() {
        let iface: InterfaceName = "wg0d".parse().unwrap();
        let peers = device_peers(&[phone()]);
        let changes = crate::agent::decide::reconcile::diff(&peers, &[]);
        let want: BTreeSet<IpNet> = phone().addresses.into_iter().collect();
        let added = update(&iface, &changes, &BTreeSet::new(), &want).render();
        assert!(added.contains("wg set wg0d peer"), "{added}");
        assert!(
            added.contains("allowed-ips 10.100.0.9/32,fd00::a64:9/128"),
            "{added}"
        );
        assert!(
            added.contains("ip -4 route replace 10.100.0.9/32 dev wg0d"),
            "{added}"
        );
        assert!(
            added.contains("ip -6 route replace fd00::a64:9/128 dev wg0d"),
            "{added}"
        );
        let gone = PeerChanges {
            upsert: Vec::new(),
            remove: vec![phone().public_key],
        };
        let removed = update(&iface, &gone, &want, &BTreeSet::new()).render();
        assert!(removed.contains("remove"), "{removed}");
        assert!(
            removed.contains("ip -4 route del 10.100.0.9/32 dev wg0d"),
            "{removed}"
        );
    }

    #[test]
    fn devices_traffic_looks_up_their_own_table_first_and_down_removes_it() {
        let iface: InterfaceName = "wg0d".parse().unwrap();
        let mesh = nets(&["10.100.0.0/16", "fd00::/96"]);
        let rules = table_rules(51821, &mesh).render();
        assert_eq!(
            rules,
            "ip -4 rule del pref 5210 lookup 51821 || true\n\
             ip -4 route flush table 51821 || true\n\
             ip -4 rule add pref 5210 from 10.100.0.0/16 lookup 51821\n\
             ip -6 rule del pref 5210 lookup 51821 || true\n\
             ip -6 route flush table 51821 || true\n\
             ip -6 rule add pref 5210 from fd00::/96 lookup 51821 || true\n"
        );
        let down = teardown(&iface, 51821).render();
        assert_eq!(
            down,
            "nft delete table inet wgmesh-gw-wg0d || true\n\
             ip link delete dev wg0d || true\n\
             ip -4 rule del pref 5210 lookup 51821 || true\n\
             ip -4 route flush table 51821 || true\n\
             ip -6 rule del pref 5210 lookup 51821 || true\n\
             ip -6 route flush table 51821 || true\n"
        );
        // Granted parts go into the devices' table through the mesh interface.
        let set = |l: &[&str]| -> BTreeSet<IpNet> { nets(l).into_iter().collect() };
        let had = set(&["198.18.5.10/32", "198.18.7.0/24"]);
        let want = set(&["198.18.5.10/32", "198.18.6.0/24", "fd00:10::/64"]);
        assert_eq!(
            device_routes("wg0", 51821, &had, &want).render(),
            "ip -4 route replace 198.18.6.0/24 dev wg0 table 51821\n\
             ip -6 route replace fd00:10::/64 dev wg0 table 51821\n\
             ip -4 route del 198.18.7.0/24 dev wg0 table 51821 || true\n"
        );
    }
}
