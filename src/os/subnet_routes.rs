//! Subnet routes on Linux, as plans: a subnet router's forwarding, filter and NAT (an
//! nftables table of its own, `wgmesh-sr-IFACE`, replaced atomically as a whole like the
//! exit node's), routes copied into a routing daemon's table, and reading the prefixes a
//! routing daemon put into one. Only Linux serves as a subnet router; every OS can use the
//! routes (through [`super::routes`]).

use super::{Command, Payload, Plan};
use crate::types::InterfaceName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The nftables table of the subnet router on interface `name`.
pub fn router_table(name: &InterfaceName) -> String {
    let safe: String = name
        .as_str()
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "_.-".contains(c) {
            true => c,
            false => '_',
        })
        .collect();
    format!("wgmesh-sr-{safe}")
}

/// Which mesh addresses may reach which addresses behind the router: one line of its
/// forward filter. Peers granted the same prefixes share one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Access {
    /// The mesh addresses (peers' /32 and /128).
    pub sources: Vec<IpNet>,
    /// What they may reach: the router's prefixes, or parts of them.
    pub prefixes: Vec<IpNet>,
}

/// What a subnet router sets up, as plain data (see the agent's `AppliedSubnetRouter`).
#[derive(Debug, Clone, Copy)]
pub struct RouterRules<'a> {
    /// The networks it routes for the mesh.
    pub prefixes: &'a [IpNet],
    /// Who may reach what of them; every other mesh packet into them is dropped.
    pub access: &'a [Access],
    /// The mesh networks, masqueraded from when `snat`.
    pub mesh: &'a [IpNet],
    /// Whether mesh traffic is masqueraded into the networks.
    pub snat: bool,
}

/// `{ a, b }` of the prefixes of one family, or None when there are none.
fn set_of(nets: &[IpNet], v4: bool) -> Option<String> {
    let list: Vec<String> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V4(_)) == v4)
        .map(|n| n.trunc().to_string())
        .collect();
    (!list.is_empty()).then(|| format!("{{ {} }}", list.join(", ")))
}

/// The ruleset of the router's table: each peer reaches exactly what the policy grants it
/// of this node's networks (`access`), replies to connections opened from them pass, other
/// mesh traffic into them is dropped, and (with SNAT) what enters them from the mesh leaves
/// with this node's LAN address.
fn ruleset(name: &InterfaceName, r: RouterRules<'_>) -> String {
    let table = router_table(name);
    let (mut forward, mut nat) = (String::new(), String::new());
    forward.push_str(&format!(
        "\t\tiifname \"{name}\" ct state established,related ct direction reply accept\n"
    ));
    for (v4, key) in [(true, "ip"), (false, "ip6")] {
        let Some(dst) = set_of(r.prefixes, v4) else {
            continue;
        };
        for access in r.access {
            if let (Some(src), Some(to)) =
                (set_of(&access.sources, v4), set_of(&access.prefixes, v4))
            {
                forward.push_str(&format!(
                    "\t\tiifname \"{name}\" {key} saddr {src} {key} daddr {to} accept\n"
                ));
            }
        }
        forward.push_str(&format!("\t\tiifname \"{name}\" {key} daddr {dst} drop\n"));
        if let (true, Some(mesh)) = (r.snat, set_of(r.mesh, v4)) {
            nat.push_str(&format!(
                "\t\t{key} saddr {mesh} {key} daddr {dst} oifname != \"{name}\" masquerade\n"
            ));
        }
    }
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {forward}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {nat}\
         \t}}\n\
         }}\n"
    )
}

/// Turns forwarding on (for each family it routes) and loads the router's table, replacing
/// any earlier version in one transaction.
pub fn router_on(name: &InterfaceName, rules: RouterRules<'_>) -> Plan {
    let mut commands = Vec::new();
    if rules.prefixes.iter().any(|n| matches!(n, IpNet::V4(_))) {
        commands.push(Command::new("sysctl").args(["-q", "net.ipv4.ip_forward=1"]));
    }
    if rules.prefixes.iter().any(|n| matches!(n, IpNet::V6(_))) {
        commands.push(Command::new("sysctl").args(["-q", "net.ipv6.conf.all.forwarding=1"]));
    }
    commands.push(
        Command::new("nft")
            .args(["-f", "/dev/stdin"])
            .stdin(Payload::Text(ruleset(name, rules))),
    );
    Plan::of(commands)
}

/// Removes the router's table (tolerating one already gone). Forwarding stays on, as after
/// an exit node: other software may rely on it.
pub fn router_off(name: &InterfaceName) -> Plan {
    Plan::of(vec![Command::new("nft")
        .args(["delete", "table", "inet", &router_table(name)])
        .tolerate_failure()])
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "-4",
        IpNet::V6(_) => "-6",
    }
}

/// Adds and removes routes through the interface in kernel table `table` (for a routing
/// daemon to announce); additions first, removals of routes already gone tolerated.
pub fn table_routes(name: &InterfaceName, table: u32, add: &[IpNet], remove: &[IpNet]) -> Plan {
    let table = table.to_string();
    let route = |verb: &str, net: &IpNet| {
        let net = net.trunc().to_string();
        Command::new("ip").args([
            family(&net.parse().expect("a prefix prints as one")),
            "route",
            verb,
            &net,
            "dev",
            name.as_str(),
            "table",
            &table,
        ])
    };
    let mut commands: Vec<Command> = add.iter().map(|n| route("replace", n)).collect();
    commands.extend(remove.iter().map(|n| route("del", n).tolerate_failure()));
    Plan::of(commands)
}

/// The commands that list kernel table `table` as JSON, IPv4 then IPv6.
pub fn read_table(table: u32) -> [Command; 2] {
    let table = table.to_string();
    [
        Command::new("ip").args(["-4", "-j", "route", "show", "table", &table]),
        Command::new("ip").args(["-6", "-j", "route", "show", "table", &table]),
    ]
}

/// The destinations in `ip -j route show` output (`default` and unparsable entries are
/// skipped; a bare address is a host route).
pub fn parse_table(json: &str) -> Vec<IpNet> {
    let Ok(serde_json::Value::Array(rows)) = serde_json::from_str(json.trim()) else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| row.get("dst")?.as_str())
        .filter_map(|dst| {
            dst.parse::<IpNet>()
                .ok()
                .or_else(|| dst.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        })
        .collect()
}

/// The subnet-route plans checked against `tests/golden/linux_subnet_*.txt`.
#[cfg(test)]
pub(super) fn golden_plans() -> Vec<(String, Plan)> {
    let wg0: InterfaceName = "wg0".parse().expect("literal");
    let nets = |list: &[&str]| -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("literal")).collect()
    };
    let prefixes = nets(&["192.168.10.0/24", "fd00:10::/64"]);
    let access = vec![
        Access {
            sources: nets(&["10.100.0.3/32", "10.100.0.7/32", "fd7a:1::3/128"]),
            prefixes: prefixes.clone(),
        },
        Access {
            sources: nets(&["10.100.0.9/32", "fd7a:1::9/128"]),
            prefixes: nets(&["192.168.10.10/32"]),
        },
    ];
    let mesh = nets(&["10.100.0.0/16", "fd7a:1::/64"]);
    let rules = |snat| RouterRules {
        prefixes: &prefixes,
        access: &access,
        mesh: &mesh,
        snat,
    };
    vec![
        (
            "linux_subnet_router_on".into(),
            router_on(&wg0, rules(true)),
        ),
        (
            "linux_subnet_router_nosnat_on".into(),
            router_on(&wg0, rules(false)),
        ),
        ("linux_subnet_router_off".into(), router_off(&wg0)),
        (
            "linux_subnet_routes_to_table".into(),
            table_routes(
                &wg0,
                200,
                &nets(&["10.100.0.0/16", "192.168.20.0/24"]),
                &nets(&["192.168.30.0/24"]),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_read_from_ip_json_skipping_default() {
        let out = r#"[{"dst":"default","gateway":"198.18.5.1","dev":"eth0"},
            {"dst":"198.18.30.0/24","gateway":"198.18.5.1","dev":"eth0","protocol":"bird"},
            {"dst":"198.18.31.7","dev":"eth0"}]"#;
        assert_eq!(
            parse_table(out),
            vec![
                "198.18.30.0/24".parse::<IpNet>().unwrap(),
                "198.18.31.7/32".parse().unwrap()
            ]
        );
        assert!(parse_table("").is_empty());
    }
}
