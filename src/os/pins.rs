//! The routes of a macOS or Windows full tunnel, planned from the routing table the OS has
//! *now* rather than from what was recorded: the two halves into the tunnel, and a host
//! route ("pin") for every address that must stay outside it, through the current uplink.
//!
//! Run each sync and on every route change, this one function covers every way the routes
//! drift: a Windows reboot (the tunnel service is back, its `store=active` routes are not),
//! a macOS network change (the default gateway moved, so the pins point at a dead router:
//! darwin.bash's `monitor_daemon` re-pins on every routing-socket message for that reason),
//! and peers whose endpoints appear, move or leave (every peer is pinned, as darwin.bash
//! pins every endpoint: wireguard-go on macOS has no fwmark, so WireGuard's own packets to
//! any peer would otherwise enter the tunnel and depend on the exit node).

use super::mesh_routes::routes;
use super::route_table::{RouteTable, Uplink};
use super::{Command, Plan, TargetOs};
use crate::types::InterfaceName;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// What the pins were made with, recorded so the next sync can remove exactly them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    /// The uplink the pins point at.
    pub uplink: Uplink,
    /// The pinned addresses.
    pub pins: Vec<Ipv4Addr>,
}

/// The tunnel whose routes are planned.
#[derive(Debug, Clone)]
pub struct TunnelRoutes<'a> {
    /// `Macos` or `Windows` (Linux's full tunnel is policy routing, not host routes).
    pub os: TargetOs,
    /// The interface routes go into (`utunN`, the Windows tunnel name).
    pub real_name: &'a InterfaceName,
    /// How the routing table names the tunnel's interface: `utunN` in `netstat`, the
    /// tunnel's IPv4 address in `route print` (which shows addresses, not names).
    pub table_iface: String,
    /// The mesh network: its addresses are reached through the tunnel and never pinned.
    pub mesh: Ipv4Net,
    /// Whether IPv6 goes into the tunnel too (`::/1`, `8000::/1`).
    pub ipv6: bool,
}

fn v4_halves() -> Vec<IpNet> {
    super::tunnel::half_defaults()
        .iter()
        .map(|h| IpNet::V4(*h))
        .collect()
}

fn v6_halves() -> Vec<IpNet> {
    ["::/1", "8000::/1"]
        .iter()
        .map(|h| IpNet::V6(h.parse::<Ipv6Net>().expect("literal halves")))
        .collect()
}

impl TunnelRoutes<'_> {
    /// The uplink pins should use now. Windows pins only through a gateway: an on-link or
    /// missing default leaves nothing to pin to, and WireGuardNT never sends its own packets
    /// into its own adapter, so no loop is possible there.
    pub fn uplink(&self, table: &RouteTable) -> Uplink {
        match self.os {
            TargetOs::Windows => table.uplink(&self.table_iface, |_| false),
            _ => table.uplink(&self.table_iface, super::observe_macos::is_point_to_point),
        }
    }

    /// The commands that make the tunnel's routes right for `table`, given the addresses
    /// that must stay outside (`outside`: the coordination server and every peer's
    /// endpoint) and what the last run pinned (`had`). Order: pins first, so the exit node
    /// stays reachable when the halves move the default; then the halves, when missing;
    /// then stale pins are removed (add before delete). Returns what is pinned afterwards.
    pub fn reconcile(
        &self,
        table: &RouteTable,
        outside: &[Ipv4Addr],
        had: Option<&Pinned>,
    ) -> (Plan, Pinned) {
        let uplink = self.uplink(table);
        let pinnable = self.os != TargetOs::Windows || matches!(uplink, Uplink::Gateway(_));
        let pins: Vec<Ipv4Addr> = if pinnable {
            let blackholing = uplink == Uplink::Unusable;
            table.pins_needed(outside, self.mesh, &self.table_iface, blackholing)
        } else {
            Vec::new()
        };
        let mut plan = Plan::default();
        for addr in &pins {
            if !table.has_pin(*addr, &uplink) {
                let stale = table.has_host_route(*addr);
                plan.commands.extend(self.pin(*addr, &uplink, stale));
            }
        }
        let v4_missing = !table.has_tunnel_halves(&self.table_iface);
        if v4_missing {
            plan.extend(routes(self.os, self.real_name, &v4_halves(), &[]));
        }
        // Checked on their own when the IPv6 table was read, else along with the IPv4 ones.
        let v6_missing = table.has_tunnel_halves_v6().map_or(v4_missing, |has| !has);
        if self.ipv6 && v6_missing {
            let mut v6 = routes(self.os, self.real_name, &v6_halves(), &[]);
            // IPv6 may be off on this host: its halves are best effort.
            v6.commands.iter_mut().for_each(|c| c.allow_failure = true);
            plan.extend(v6);
        }
        if let Some(had) = had {
            for addr in &had.pins {
                if !pins.contains(addr) {
                    plan.commands.push(self.unpin(*addr));
                }
            }
        }
        (plan, Pinned { uplink, pins })
    }

    /// Removes the halves and the pins `had` lists, tolerating any already gone.
    pub fn remove(&self, had: Option<&Pinned>) -> Plan {
        let mut halves = v4_halves();
        if self.ipv6 {
            halves.extend(v6_halves());
        }
        let mut plan = routes(self.os, self.real_name, &[], &halves);
        for addr in had.map(|h| h.pins.as_slice()).unwrap_or_default() {
            plan.commands.push(self.unpin(*addr));
        }
        plan
    }

    /// A host route for `addr` through `uplink`, replacing a `stale` one the table shows.
    /// macOS without a usable uplink gets a blackhole, as darwin.bash does ("prevent routing
    /// loop"): better no path to that address than WireGuard packets looping into their own
    /// tunnel.
    ///
    /// macOS replaces by delete then add, as darwin.bash's `set_endpoint_direct_route` does,
    /// never `route change`: xnu's RTM_CHANGE (`bsd/net/rtsock.c`, "Changing flags still
    /// doesn't work") sets the gateway but keeps the flags, so a `-blackhole` pin would stay
    /// a blackhole under its new gateway for as long as the tunnel is up. Windows'
    /// `route CHANGE` has no such flag to keep.
    fn pin(&self, addr: Ipv4Addr, uplink: &Uplink, stale: bool) -> Vec<Command> {
        let a = addr.to_string();
        match self.os {
            TargetOs::Windows => {
                let Uplink::Gateway(g) = uplink else {
                    return Vec::new();
                };
                let route = |verb: &str| {
                    Command::new("route").args([
                        verb,
                        &a,
                        "MASK",
                        "255.255.255.255",
                        &g.to_string(),
                    ])
                };
                vec![route("ADD").or_else(route("CHANGE"))]
            }
            _ => {
                let target: Vec<String> = match uplink {
                    Uplink::Gateway(g) => vec!["-gateway".into(), g.to_string()],
                    Uplink::Interface(i) => vec!["-interface".into(), i.to_string()],
                    Uplink::Unusable => vec!["127.0.0.1".into(), "-blackhole".into()],
                };
                let mut commands = Vec::new();
                if stale {
                    commands.push(self.unpin(addr));
                }
                commands.push(
                    Command::new("route")
                        .args(["-q", "-n", "add", "-inet", &a])
                        .args(target),
                );
                commands
            }
        }
    }

    fn unpin(&self, addr: Ipv4Addr) -> Command {
        let a = addr.to_string();
        match self.os {
            TargetOs::Windows => {
                Command::new("route").args(["DELETE", &a, "MASK", "255.255.255.255"])
            }
            _ => Command::new("route").args(["-q", "-n", "delete", "-inet", &a]),
        }
        .tolerate_failure()
    }
}

/// The WireGuard half of a macOS or Windows full tunnel: the exit peer's allowed IPs with
/// (`on`) or without the default routes. The routes are [`TunnelRoutes`]' business, planned
/// from the observed table each sync.
pub fn exit_peer_plan(
    os: TargetOs,
    real_name: &InterfaceName,
    exit_peer: &super::PeerSpec,
    on: bool,
) -> Plan {
    Plan::of(vec![super::tunnel::exit_peer_update(
        super::wg_program(os),
        real_name,
        Vec::new(),
        exit_peer,
        on,
    )])
}

/// A whole macOS or Windows full tunnel for a host whose default route goes through
/// `gateway` (`0.0.0.0`: no usable one), as [`super::full_tunnel_on`] shows it (golden files,
/// plans printed for another machine): the same algorithm the agent runs on the observed
/// table, here on a table holding just that default route. The exit peer's endpoint and
/// `keep_outside` are pinned.
pub fn full_tunnel_on(
    os: TargetOs,
    real_name: &InterfaceName,
    exit_peer: &super::PeerSpec,
    keep_outside: &[std::net::IpAddr],
    gateway: Ipv4Addr,
) -> Plan {
    let (routes, table) = assumed(os, real_name, exit_peer, keep_outside, gateway);
    let mut plan = exit_peer_plan(os, real_name, exit_peer, true);
    let outside = super::tunnel::pinned_v4(exit_peer, keep_outside);
    plan.extend(routes.reconcile(&table, &outside, None).0);
    plan
}

/// Undoes [`full_tunnel_on`] (same arguments), tolerating pieces already gone.
pub fn full_tunnel_off(
    os: TargetOs,
    real_name: &InterfaceName,
    exit_peer: &super::PeerSpec,
    keep_outside: &[std::net::IpAddr],
    gateway: Ipv4Addr,
) -> Plan {
    let (routes, table) = assumed(os, real_name, exit_peer, keep_outside, gateway);
    let pinned = Pinned {
        uplink: routes.uplink(&table),
        pins: super::tunnel::pinned_v4(exit_peer, keep_outside),
    };
    let mut plan = routes.remove(Some(&pinned));
    plan.extend(exit_peer_plan(os, real_name, exit_peer, false));
    plan
}

/// The tunnel and a routing table holding only a default route through `gateway` (none
/// when it is `0.0.0.0`).
fn assumed<'a>(
    os: TargetOs,
    real_name: &'a InterfaceName,
    exit_peer: &super::PeerSpec,
    keep_outside: &[std::net::IpAddr],
    gateway: Ipv4Addr,
) -> (TunnelRoutes<'a>, RouteTable) {
    let routes = TunnelRoutes {
        os,
        real_name,
        table_iface: real_name.to_string(),
        // No mesh is known here: a /32 on the broadcast address excludes nothing more.
        mesh: Ipv4Net::from(Ipv4Addr::BROADCAST),
        ipv6: !super::tunnel::half_defaults_v6(exit_peer, keep_outside).is_empty(),
    };
    let mut table = RouteTable::default();
    if !gateway.is_unspecified() {
        table.routes.push(super::route_table::Route {
            dest: Ipv4Net::default(),
            next_hop: super::route_table::NextHop::Gateway(gateway),
            iface: "uplink".into(),
            metric: 0,
            scoped: false,
        });
    }
    (routes, table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{observe_macos, observe_windows};

    use crate::os::route_table::fixture;

    fn addrs(list: &[&str]) -> Vec<Ipv4Addr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The server, the exit's endpoint, a peer on the internet, a peer on the LAN, and one
    /// inside the mesh (a peer behind the exit node advertising its mesh address).
    fn outside() -> Vec<Ipv4Addr> {
        addrs(&[
            "198.18.0.1",
            "198.18.0.7",
            "203.0.113.9",
            "192.168.1.40",
            "10.100.0.9",
        ])
    }

    fn pinned(gw: &str, pins: &[&str]) -> Pinned {
        Pinned {
            uplink: Uplink::Gateway(gw.parse().unwrap()),
            pins: addrs(pins),
        }
    }

    /// Renders one scenario: what the table says, what is planned, what is pinned after.
    fn scenario(out: &mut String, title: &str, plan: &Plan, after: &Pinned) {
        out.push_str(&format!("## {title}\n{}", plan.render()));
        out.push_str(&format!(
            "# pinned after: {:?} via {:?}\n\n",
            after.pins, after.uplink
        ));
    }

    fn check_golden(name: &str, actual: &str) {
        let path = format!("{}/tests/golden_routes/{name}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}; UPDATE_GOLDEN=1 creates it"));
        assert!(
            expected == actual,
            "{path} differs (UPDATE_GOLDEN=1 rewrites it after you check):\n{actual}"
        );
    }

    #[test]
    fn printed_plans_never_route_via_0_0_0_0_when_no_gateway_is_known() {
        let exit = crate::os::PeerSpec {
            public_key: crate::keys::PrivateKey::generate().public_key(),
            endpoint: Some("198.18.0.7:51820".parse().unwrap()),
            allowed_ips: vec!["10.100.0.7/32".parse().unwrap()],
            persistent_keepalive: None,
        };
        let outside = ["198.18.0.1".parse().unwrap()];
        let utun: InterfaceName = "utun3".parse().unwrap();
        let mac = full_tunnel_on(
            TargetOs::Macos,
            &utun,
            &exit,
            &outside,
            Ipv4Addr::UNSPECIFIED,
        );
        let text = mac.render();
        assert!(
            text.contains("route -q -n add -inet 198.18.0.7 127.0.0.1 -blackhole"),
            "{text}"
        );
        assert!(!text.contains("-gateway"), "{text}");
        let wg0: InterfaceName = "wg0".parse().unwrap();
        let win = full_tunnel_on(
            TargetOs::Windows,
            &wg0,
            &exit,
            &outside,
            Ipv4Addr::UNSPECIFIED,
        );
        let text = win.render();
        assert!(
            !text.contains("MASK"),
            "no pin at all rather than one via 0.0.0.0: {text}"
        );
        assert!(text.contains("prefix=0.0.0.0/1"), "{text}");
    }

    #[test]
    fn macos_routes_follow_the_routing_table() {
        let real: InterfaceName = "utun3".parse().unwrap();
        let t = TunnelRoutes {
            os: TargetOs::Macos,
            real_name: &real,
            table_iface: "utun3".into(),
            mesh: "10.100.0.0/16".parse().unwrap(),
            ipv6: true,
        };
        let table = |name: &str| observe_macos::parse_netstat(&fixture("macos", name));
        let mut out = String::new();

        let (plan, first) = t.reconcile(&table("netstat_home.txt"), &outside(), None);
        scenario(
            &mut out,
            "first sync at home: pin every peer behind the default, then the halves",
            &plan,
            &first,
        );
        assert_eq!(
            first,
            pinned("192.168.1.1", &["198.18.0.1", "198.18.0.7", "203.0.113.9"])
        );

        let had = pinned("192.168.1.1", &["198.18.0.1", "198.18.0.7", "203.0.113.9"]);
        let (plan, same) = t.reconcile(&table("netstat_tunnel_up.txt"), &outside(), Some(&had));
        scenario(
            &mut out,
            "next sync, nothing changed: nothing to run",
            &plan,
            &same,
        );
        assert!(plan.is_empty(), "{}", plan.render());

        let (plan, moved) = t.reconcile(&table("netstat_cafe.txt"), &outside(), Some(&had));
        scenario(
            &mut out,
            "network change (new router 10.0.0.1): every pin repointed, the old LAN peer now pinned too",
            &plan,
            &moved,
        );
        assert_eq!(moved.uplink, Uplink::Gateway("10.0.0.1".parse().unwrap()));
        // The old LAN peer 192.168.1.40 is now on the internet too: pinned as well. The
        // three old pins are deleted and added again (never `route change`).
        let text = plan.render();
        assert_eq!(text.matches(" add -inet ").count(), 4, "{text}");
        assert_eq!(text.matches(" delete -inet ").count(), 3, "{text}");
        assert!(!text.contains("change"), "{text}");

        let blackholed = Pinned {
            uplink: Uplink::Unusable,
            pins: addrs(&["198.18.0.1", "198.18.0.7", "203.0.113.9"]),
        };
        let (plan, healed) = t.reconcile(
            &table("netstat_blackholed.txt"),
            &outside(),
            Some(&blackholed),
        );
        scenario(
            &mut out,
            "a router appears after the pins were blackholed: delete, then add via the router",
            &plan,
            &healed,
        );
        let text = plan.render();
        assert!(
            text.starts_with(
                "route -q -n delete -inet 198.18.0.1 || true\n\
                 route -q -n add -inet 198.18.0.1 -gateway 192.168.1.1\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("change") && !text.contains("blackhole"),
            "{text}"
        );

        let fewer = addrs(&["198.18.0.1", "198.18.0.7"]);
        let (plan, after) = t.reconcile(&table("netstat_tunnel_up.txt"), &fewer, Some(&had));
        scenario(
            &mut out,
            "peer 203.0.113.9 left the mesh: its pin goes",
            &plan,
            &after,
        );
        assert_eq!(
            plan.render(),
            "route -q -n delete -inet 203.0.113.9 || true\n"
        );

        let (plan, ppp) = t.reconcile(&table("netstat_ppp.txt"), &outside(), None);
        scenario(
            &mut out,
            "PPP uplink (no gateway address): pins out of ppp0",
            &plan,
            &ppp,
        );
        let (plan, none) = t.reconcile(&table("netstat_link_only.txt"), &outside(), None);
        scenario(
            &mut out,
            "only a link# default: blackhole the pins like wg-quick, never -gateway 0.0.0.0",
            &plan,
            &none,
        );
        assert!(plan.render().contains("127.0.0.1 -blackhole"));
        assert!(!plan.render().contains("0.0.0.0 "), "{}", plan.render());

        out.push_str("## down\n");
        out.push_str(&t.remove(Some(&had)).render());
        check_golden("macos.txt", &out);
    }

    #[test]
    fn windows_routes_follow_the_routing_table() {
        let real: InterfaceName = "wg0".parse().unwrap();
        let t = TunnelRoutes {
            os: TargetOs::Windows,
            real_name: &real,
            table_iface: "10.100.0.5".into(),
            mesh: "10.100.0.0/16".parse().unwrap(),
            ipv6: true,
        };
        let table = |name: &str| observe_windows::parse_route_print(&fixture("windows", name));
        let had = pinned("192.168.1.1", &["198.18.0.1", "198.18.0.7", "203.0.113.9"]);
        let mut out = String::new();

        let (plan, first) = t.reconcile(&table("route_print_home.txt"), &outside(), None);
        scenario(
            &mut out,
            "first sync: pins via the discovered gateway, then the halves",
            &plan,
            &first,
        );
        assert_eq!(first, had);

        let up = table("route_print_tunnel_up.txt");
        let two = addrs(&["198.18.0.1", "198.18.0.7"]);
        let had_two = pinned("192.168.1.1", &["198.18.0.1", "198.18.0.7"]);
        let (plan, _) = t.reconcile(&up, &two, Some(&had_two));
        scenario(
            &mut out,
            "next sync, nothing changed: nothing to run",
            &plan,
            &had_two,
        );
        assert!(plan.is_empty(), "{}", plan.render());

        // After a reboot the service is back with the same key, so the interface looks
        // fine, but the store=active halves and the pins are gone: all of it is re-added.
        let (plan, again) = t.reconcile(&table("route_print_home.txt"), &outside(), Some(&had));
        scenario(
            &mut out,
            "after a reboot: service back, routes gone -> everything re-added",
            &plan,
            &again,
        );
        assert!(plan.render().contains("prefix=0.0.0.0/1"));
        assert_eq!(again, had);

        let (plan, de) = t.reconcile(&table("route_print_two_uplinks_de.txt"), &outside(), None);
        scenario(
            &mut out,
            "two uplinks: the lower-metric gateway",
            &plan,
            &de,
        );
        assert_eq!(de.uplink, Uplink::Gateway("172.16.8.1".parse().unwrap()));

        let (plan, ppp) = t.reconcile(&table("route_print_ppp.txt"), &outside(), None);
        scenario(
            &mut out,
            "on-link (PPP) default: nothing to pin to, never via 0.0.0.0",
            &plan,
            &ppp,
        );
        assert!(ppp.pins.is_empty());
        assert!(!plan.render().contains("0.0.0.0\n"), "{}", plan.render());

        out.push_str("## down\n");
        out.push_str(&t.remove(Some(&had)).render());
        check_golden("windows.txt", &out);
    }
}
