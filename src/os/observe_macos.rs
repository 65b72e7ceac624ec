//! Reading macOS's routing table: `netstat -rn -f inet` (what wireguard-tools' darwin.bash
//! reads in `collect_gateways`) and `route -n get default`, parsed into a [`RouteTable`] /
//! [`Uplink`]. Pure functions over recorded text; the agent runs the commands through its
//! reader and calls these.

use super::command::Command;
use super::route_table::{NextHop, Route, RouteTable, Uplink};
use crate::types::InterfaceName;
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// `netstat -rn -f inet`: the whole IPv4 table, numeric, one row per route.
pub fn netstat_command() -> Command {
    Command::new("netstat").args(["-rn", "-f", "inet"])
}

/// Whether a macOS interface is point-to-point, so a default route straight out of it (no
/// gateway address) is still usable for pins: PPP links and other VPNs' tunnels. A default
/// via `link#N` on Ethernet or Wi-Fi is not (the destination is not on that link).
pub fn is_point_to_point(iface: &str) -> bool {
    ["ppp", "utun", "ipsec", "tun", "gif"]
        .iter()
        .any(|p| iface.starts_with(p) && iface[p.len()..].bytes().all(|b| b.is_ascii_digit()))
}

/// Parses a netstat destination: `default`, `127`, `169.254`, `10.100/16`, `0/1`,
/// `192.168.1.23/32`, `198.18.0.7` (a host). Trailing zero octets are left out by netstat;
/// without `/len` the mask is the classful one (at least as long as the octets shown), or
/// /32 for four octets.
fn parse_destination(dest: &str) -> Option<Ipv4Net> {
    if dest == "default" {
        return Some(Ipv4Net::default());
    }
    let (addr, len) = match dest.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
        None => (dest, None),
    };
    let parts: Vec<u8> = addr
        .split('.')
        .map(|p| p.parse::<u8>().ok())
        .collect::<Option<Vec<u8>>>()?;
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    octets[..parts.len()].copy_from_slice(&parts);
    let len = len.unwrap_or_else(|| {
        if parts.len() == 4 {
            32
        } else {
            let classful = match octets[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            };
            classful.max(8 * parts.len() as u8)
        }
    });
    Ipv4Net::new(Ipv4Addr::from(octets), len)
        .ok()
        .map(|n| n.trunc())
}

/// Where the columns a route needs are in `netstat -rn` rows, read from the header line:
/// macOS 12 and later print `Destination Gateway Flags Netif Expire`, earlier versions
/// `Destination Gateway Flags Refs Use Netif Expire` (darwin.bash's `set_mtu` reads
/// `destination _ _ _ _ netif`, the older layout). Taken by position, the old layout's
/// `Refs` would be read as the interface and every pin would look wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Columns {
    gateway: usize,
    flags: usize,
    netif: usize,
}

impl Columns {
    /// The modern layout, assumed until a header says otherwise.
    const MODERN: Columns = Columns {
        gateway: 1,
        flags: 2,
        netif: 3,
    };

    /// The columns a header line names, if it is one.
    fn from_header(line: &str) -> Option<Columns> {
        let names: Vec<&str> = line.split_whitespace().collect();
        if names.first() != Some(&"Destination") {
            return None;
        }
        let at = |name: &str| names.iter().position(|n| *n == name);
        Some(Columns {
            gateway: at("Gateway")?,
            flags: at("Flags")?,
            netif: at("Netif")?,
        })
    }
}

/// Parses `netstat -rn -f inet`, its columns found by the header (see [`Columns`]). Rows
/// that are not IPv4 routes (headers, `Routing tables`) are skipped. A gateway that is an
/// address is a router (`G`) or, for host rows without `G`, the interface's own address
/// (on-link); `link#N`, MAC addresses and interface names are on-link; flags `B`/`R` mark
/// blackholes; flag `I` marks an interface-scoped copy.
pub fn parse_netstat(text: &str) -> RouteTable {
    let mut routes = Vec::new();
    let mut columns = Columns::MODERN;
    for line in text.lines() {
        if let Some(header) = Columns::from_header(line) {
            columns = header;
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(gateway), Some(flags), Some(netif)) = (
            fields.get(columns.gateway),
            fields.get(columns.flags),
            fields.get(columns.netif),
        ) else {
            continue;
        };
        let Some(dest) = parse_destination(fields[0]) else {
            continue;
        };
        let next_hop = if flags.contains('B') || flags.contains('R') {
            NextHop::Blackhole
        } else {
            match gateway.parse::<Ipv4Addr>() {
                Ok(g) if flags.contains('G') => NextHop::Gateway(g),
                _ => NextHop::OnLink,
            }
        };
        routes.push(Route {
            dest,
            next_hop,
            iface: netif.to_string(),
            metric: 0,
            scoped: flags.contains('I'),
        });
    }
    RouteTable {
        routes,
        tunnel_v6: None,
    }
}

/// `ifconfig IFACE`, whose first line ends in `mtu N` (darwin.bash's `set_mtu` reads it for
/// the default route's interface).
pub fn ifconfig_command(iface: &str) -> Command {
    Command::new("ifconfig").arg(iface)
}

/// The `mtu N` of an `ifconfig` output.
pub fn parse_ifconfig_mtu(text: &str) -> Option<u16> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// The commands that tell whether the recorded `utunN` is still this mesh's interface, as
/// wg-quick's `get_real_interface` checks (darwin.bash): the name file wireguard-go wrote
/// when it created the interface (`cat`), and the modification times of that file and of
/// the interface's control socket (`stat -f %m`, seconds since the epoch, one per line).
pub fn utun_owner_commands(name: &InterfaceName, utun: &InterfaceName) -> [Command; 2] {
    let name_file = super::macos::name_file(name).display().to_string();
    let socket = format!("/var/run/wireguard/{utun}.sock");
    [
        Command::new("cat").arg(name_file.clone()),
        Command::new("stat").args(["-f", "%m", &name_file, &socket]),
    ]
}

/// Whether `utun` is still ours, from [`utun_owner_commands`]' outputs (`None`: the command
/// failed, e.g. a file is missing): the name file names it, its socket exists, and the two
/// were made within 2 s of each other, so the name file is not a leftover of a crash whose
/// `utunN` another tunnel has since been given (wg-quick's `get_real_interface`).
pub fn utun_is_ours(name_file: Option<&str>, mtimes: Option<&str>, utun: &InterfaceName) -> bool {
    let named = name_file.is_some_and(|n| n.trim() == utun.as_str());
    let times: Vec<i64> = mtimes
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    named && times.len() == 2 && (times[0] - times[1]).abs() < 2
}

/// Runs [`utun_owner_commands`] through `reader` and decides with [`utun_is_ours`].
pub fn check_utun_owner(
    reader: &mut dyn super::runner::Runner,
    name: &InterfaceName,
    utun: &InterfaceName,
) -> bool {
    let [cat, stat] = utun_owner_commands(name, utun);
    let name_file = reader.run(&cat).ok().map(|o| o.stdout);
    let mtimes = reader.run(&stat).ok().map(|o| o.stdout);
    utun_is_ours(name_file.as_deref(), mtimes.as_deref(), utun)
}

/// `netstat -rn -f inet6`: the IPv6 table, read for the tunnel's own rows.
pub fn netstat6_command() -> Command {
    Command::new("netstat").args(["-rn", "-f", "inet6"])
}

/// The IPv6 prefixes `netstat -rn -f inet6` shows routed out of `utun` (columns by header,
/// as [`parse_netstat`]): `default` is `::/0`, a destination without `/len` is a host
/// (`/128`), and a `%scope` suffix (link-local rows) is dropped.
pub fn parse_netstat6_tunnel(text: &str, utun: &str) -> Vec<Ipv6Net> {
    let mut out = Vec::new();
    let mut columns = Columns::MODERN;
    for line in text.lines() {
        if let Some(header) = Columns::from_header(line) {
            columns = header;
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(columns.netif) != Some(&utun) {
            continue;
        }
        let dest = fields[0];
        let net = if dest == "default" {
            Some(Ipv6Net::default())
        } else {
            let (addr, len) = dest.split_once('/').unwrap_or((dest, "128"));
            let addr = addr.split('%').next().unwrap_or(addr);
            match (addr.parse::<Ipv6Addr>(), len.parse::<u8>()) {
                (Ok(a), Ok(l)) => Ipv6Net::new(a, l).ok().map(|n| n.trunc()),
                _ => None,
            }
        };
        out.extend(net);
    }
    out
}

/// Parses `route -n get default` (stdout; pass "" when it failed with "not in table" or
/// "route has not been found"): a `gateway:` that is an address is the uplink; none, or a
/// `link#N` one, leaves the interface, usable only when it is point-to-point. The agent
/// reads the whole table ([`parse_netstat`]), which also shows its own routes; this is the
/// quick one-route reading for diagnostics, tested to agree with it.
pub fn parse_route_get_default(text: &str, tunnel_iface: &str) -> Uplink {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    let iface = field("interface").filter(|i| i != tunnel_iface);
    match field("gateway").and_then(|g| g.parse::<Ipv4Addr>().ok()) {
        Some(g) if !g.is_unspecified() && iface.is_some() => Uplink::Gateway(g),
        _ => match iface {
            Some(i) if is_point_to_point(&i) && field("gateway").is_none() => {
                i.parse().map_or(Uplink::Unusable, Uplink::Interface)
            }
            _ => Uplink::Unusable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        crate::os::route_table::fixture("macos", name)
    }

    fn gw(s: &str) -> Uplink {
        Uplink::Gateway(s.parse().unwrap())
    }

    fn uplink(name: &str) -> Uplink {
        parse_netstat(&fixture(name)).uplink("utun3", is_point_to_point)
    }

    #[test]
    fn netstat_destinations_expand_like_netstat_abbreviates_them() {
        for (text, net) in [
            ("default", "0.0.0.0/0"),
            ("127", "127.0.0.0/8"),
            ("169.254", "169.254.0.0/16"),
            ("192.168.1", "192.168.1.0/24"),
            ("10.100/16", "10.100.0.0/16"),
            ("10/22", "10.0.0.0/22"),
            ("0/1", "0.0.0.0/1"),
            ("128.0/1", "128.0.0.0/1"),
            ("224.0.0/4", "224.0.0.0/4"),
            ("198.18.0.7", "198.18.0.7/32"),
            ("255.255.255.255/32", "255.255.255.255/32"),
        ] {
            assert_eq!(
                parse_destination(text),
                Some(net.parse().unwrap()),
                "{text}"
            );
        }
        for bad in ["Destination", "Internet:", "fe80::1", "1.2.3.4.5", "10/40"] {
            assert_eq!(parse_destination(bad), None, "{bad}");
        }
    }

    #[test]
    fn netstat_gives_the_gateway_and_skips_scoped_and_link_defaults() {
        assert_eq!(uplink("netstat_home.txt"), gw("192.168.1.1"));
        assert_eq!(uplink("netstat_tunnel_up.txt"), gw("192.168.1.1"));
        assert_eq!(uplink("netstat_cafe.txt"), gw("10.0.0.1"));
        // No gateway address: point-to-point links are usable as they are; link#N is not.
        assert_eq!(
            uplink("netstat_ppp.txt"),
            Uplink::Interface("ppp0".parse().unwrap())
        );
        assert_eq!(uplink("netstat_link_only.txt"), Uplink::Unusable);
        // Another VPN owns the primary default; en0's default is scoped and not used.
        assert_eq!(
            uplink("netstat_other_vpn.txt"),
            Uplink::Interface("utun5".parse().unwrap())
        );
    }

    #[test]
    fn netstat_shows_whether_the_tunnel_routes_and_pins_survive() {
        let up = parse_netstat(&fixture("netstat_tunnel_up.txt"));
        assert!(up.has_tunnel_halves("utun3"));
        let home = gw("192.168.1.1");
        for pin in ["198.18.0.1", "198.18.0.7", "203.0.113.9"] {
            assert!(up.has_pin(pin.parse().unwrap(), &home), "{pin}");
        }
        // After a network change the pins still name the old router: they need re-pinning.
        let cafe = parse_netstat(&fixture("netstat_cafe.txt"));
        assert!(!cafe.has_pin("198.18.0.7".parse().unwrap(), &gw("10.0.0.1")));
        assert!(!parse_netstat(&fixture("netstat_home.txt")).has_tunnel_halves("utun3"));
    }

    #[test]
    fn netstat_decides_which_addresses_need_pins() {
        let mesh: Ipv4Net = "10.100.0.0/16".parse().unwrap();
        let up = parse_netstat(&fixture("netstat_tunnel_up.txt"));
        let candidates: Vec<Ipv4Addr> = [
            "198.18.0.7",   // exit endpoint (pinned already, still needs it)
            "192.168.1.40", // a peer on the same LAN
            "10.100.0.9",   // a mesh address
            "127.0.0.1",
            "203.0.113.9",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let pins = up.pins_needed(&candidates, mesh, "utun3", false);
        assert_eq!(
            pins,
            vec![
                "198.18.0.7".parse::<Ipv4Addr>().unwrap(),
                "203.0.113.9".parse().unwrap()
            ]
        );
        // Behind another VPN with a 10.8/16 route, a peer at 10.8.0.3 is reached through it.
        let vpn = parse_netstat(&fixture("netstat_other_vpn.txt"));
        assert!(!vpn.reached_via_default("10.8.0.3".parse().unwrap(), mesh, "utun3"));
        assert!(vpn.reached_via_default("203.0.113.9".parse().unwrap(), mesh, "utun3"));
    }

    #[test]
    fn netstat_columns_come_from_the_header_in_both_layouts() {
        // macOS 11 and earlier: Refs and Use columns before Netif.
        let old = parse_netstat(&fixture("netstat_tunnel_up_refs_use.txt"));
        let new = parse_netstat(&fixture("netstat_tunnel_up.txt"));
        assert_eq!(old, new, "the same table in both layouts");
        assert!(old.has_tunnel_halves("utun3"));
        let g = Uplink::Gateway("192.168.1.1".parse().unwrap());
        assert!(old.has_pin("198.18.0.7".parse().unwrap(), &g));
        assert_eq!(old.uplink("utun3", is_point_to_point), g);
    }

    #[test]
    fn a_recorded_utun_is_ours_only_while_its_name_file_and_socket_match() {
        let utun3: InterfaceName = "utun3".parse().unwrap();
        let same = "1764990000\n1764990001\n";
        assert!(utun_is_ours(Some("utun3\n"), Some(same), &utun3));
        // Another tunnel got utun3 after a crash: the name file names utun4 now ...
        assert!(!utun_is_ours(Some("utun4\n"), Some(same), &utun3));
        // ... or the socket is younger than the name file (re-created since) ...
        assert!(!utun_is_ours(
            Some("utun3"),
            Some("1764990000\n1764999000\n"),
            &utun3
        ));
        // ... or the socket or the name file is gone.
        assert!(!utun_is_ours(Some("utun3"), None, &utun3));
        assert!(!utun_is_ours(None, Some(same), &utun3));
        let [cat, stat] = utun_owner_commands(&"wg0".parse().unwrap(), &utun3);
        assert_eq!(cat.render(), "cat /var/run/wireguard/wg0.name");
        assert_eq!(
            stat.render(),
            "stat -f %m /var/run/wireguard/wg0.name /var/run/wireguard/utun3.sock"
        );
    }

    #[test]
    fn the_uplink_mtu_comes_from_ifconfig() {
        assert_eq!(parse_ifconfig_mtu(&fixture("ifconfig_en0.txt")), Some(1492));
        assert_eq!(parse_ifconfig_mtu("lo0: flags=8049<UP>\n"), None);
        assert_eq!(crate::os::mtu_below(Some(1492)), 1412);
        assert_eq!(crate::os::mtu_below(None), 1420);
        assert_eq!(crate::os::mtu_below(Some(600)), 576);
    }

    #[test]
    fn netstat6_shows_the_tunnels_ipv6_halves_and_routes() {
        let text = fixture("netstat6_tunnel_up.txt");
        let v6 = parse_netstat6_tunnel(&text, "utun3");
        let has = |n: &str| v6.contains(&n.parse().unwrap());
        assert!(
            has("::/1") && has("8000::/1") && has("fd12:3456:789a::/96"),
            "{v6:?}"
        );
        assert!(
            has("fd12:3456:789a::a64:5/128") && has("fe80::/64"),
            "{v6:?}"
        );
        assert!(!has("::/0"), "en0's default is not the tunnel's: {v6:?}");
        let table = RouteTable {
            routes: Vec::new(),
            tunnel_v6: Some(v6),
        };
        assert_eq!(table.has_tunnel_halves_v6(), Some(true));
        let gone = parse_netstat6_tunnel(&fixture("netstat6_halves_gone.txt"), "utun3");
        let table = RouteTable {
            routes: Vec::new(),
            tunnel_v6: Some(gone),
        };
        assert_eq!(table.has_tunnel_halves_v6(), Some(false));
    }

    #[test]
    fn route_get_default_variants() {
        let get = |name: &str| parse_route_get_default(&fixture(name), "utun3");
        assert_eq!(get("route_get_default.txt"), gw("192.168.1.1"));
        assert_eq!(
            get("route_get_default_ppp.txt"),
            Uplink::Interface("ppp0".parse().unwrap())
        );
        assert_eq!(get("route_get_default_link.txt"), Uplink::Unusable);
        assert_eq!(
            get("route_get_default_other_vpn.txt"),
            Uplink::Interface("utun5".parse().unwrap())
        );
        // The command fails with this on stderr; stdout is empty.
        assert_eq!(parse_route_get_default("", "utun3"), Uplink::Unusable);
        assert!(fixture("route_get_default_none.txt").contains("not been found"));
        // Our own utun is never an uplink.
        let own = fixture("route_get_default_other_vpn.txt").replace("utun5", "utun3");
        assert_eq!(parse_route_get_default(&own, "utun3"), Uplink::Unusable);
    }

    #[test]
    fn route_get_default_and_netstat_agree_on_the_uplink() {
        // Two independent readings of the same situations must lead to the same pins: a
        // check on the reconstructed outputs as much as on the parsers.
        for (get, netstat) in [
            ("route_get_default.txt", "netstat_home.txt"),
            ("route_get_default_ppp.txt", "netstat_ppp.txt"),
            ("route_get_default_link.txt", "netstat_link_only.txt"),
            ("route_get_default_other_vpn.txt", "netstat_other_vpn.txt"),
        ] {
            assert_eq!(
                parse_route_get_default(&fixture(get), "utun3"),
                uplink(netstat),
                "{get} vs {netstat}"
            );
        }
    }

    #[test]
    fn point_to_point_names() {
        for yes in ["ppp0", "utun5", "ipsec0", "gif0"] {
            assert!(is_point_to_point(yes), "{yes}");
        }
        for no in ["en0", "bridge100", "utunx", "pppoe-thing", "lo0"] {
            assert!(!is_point_to_point(no), "{no}");
        }
    }
}
