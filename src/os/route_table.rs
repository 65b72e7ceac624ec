//! The host's IPv4 routing table as observed on macOS (`netstat -rn -f inet`) and Windows
//! (`route print -4`), reduced to what a full tunnel needs to decide: which uplink the default
//! route uses (a gateway, a point-to-point interface, or none usable), which addresses are
//! reached through that default route (and so need a pinned host route), and whether the
//! tunnel's own routes are still there (after a reboot or a network change they may not be).
//!
//! Parsing lives in [`super::observe_macos`] and [`super::observe_windows`]; this module is the
//! shared, pure model both produce, so the decisions are made (and tested) once.

use crate::types::InterfaceName;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Where a route sends packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// Through a router on a directly connected network.
    Gateway(Ipv4Addr),
    /// Straight out of the interface (a connected subnet, a point-to-point link, `link#N`,
    /// Windows' `On-link`).
    OnLink,
    /// Dropped (macOS `-blackhole`/`-reject`, flags `B`/`R`).
    Blackhole,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination prefix (`default` is `0.0.0.0/0`).
    pub dest: Ipv4Net,
    /// Where it goes.
    pub next_hop: NextHop,
    /// The interface as the OS names it in this output: `en0`/`utun3` on macOS, the
    /// interface's IPv4 address on Windows (`route print` shows no names).
    pub iface: String,
    /// Windows' effective metric (route + interface metric); 0 where the OS shows none.
    pub metric: u32,
    /// macOS flag `I`: a route scoped to one interface, never used for unscoped lookups
    /// (macOS keeps one scoped default per active service besides the primary one).
    pub scoped: bool,
}

/// The parsed table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Every row, in the order the OS printed them.
    pub routes: Vec<Route>,
    /// The IPv6 prefixes routed into the tunnel (`netstat -rn -f inet6` rows out of `utunN`,
    /// `netsh interface ipv6 show route` rows on the tunnel's interface), when that table
    /// was read: the IPv6 halves and subnet routes are then checked like the IPv4 ones.
    pub tunnel_v6: Option<Vec<Ipv6Net>>,
}

/// How packets leave for the internet when the tunnel is not in the way: what host routes
/// that must stay outside the tunnel are pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Uplink {
    /// A default route through this router.
    Gateway(Ipv4Addr),
    /// A default route straight out of a point-to-point interface (PPP, another VPN's utun).
    Interface(InterfaceName),
    /// No usable default route (none at all, or only `link#N`): pinning is impossible, and
    /// pinned addresses are blackholed instead so WireGuard's packets cannot loop into itself.
    Unusable,
}

/// Addresses never pinned whatever the table says: they are local or inside the mesh.
fn excluded(addr: Ipv4Addr, mesh: Ipv4Net) -> bool {
    addr.is_loopback()
        || addr.is_link_local()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.is_unspecified()
        || mesh.contains(&addr)
}

/// A route into the tunnel that a full tunnel needs: the two IPv4 halves.
fn is_half(dest: &Ipv4Net) -> bool {
    dest.prefix_len() == 1
}

impl RouteTable {
    /// The default route in use, ignoring `tunnel_iface` (ours) and interface-scoped copies:
    /// the lowest metric wins, then the first printed (macOS lists the primary one first).
    pub fn default_route(&self, tunnel_iface: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.dest.prefix_len() == 0 && !r.scoped && r.iface != tunnel_iface)
            .filter(|r| r.next_hop != NextHop::Blackhole)
            .min_by_key(|r| r.metric)
    }

    /// What pinned host routes should point at. `point_to_point` says whether an interface
    /// name is a point-to-point link (macOS `ppp0`, `utun4`): a gateway-less default through
    /// one is usable; through anything else (`link#N` on Ethernet) it is not.
    pub fn uplink(&self, tunnel_iface: &str, point_to_point: impl Fn(&str) -> bool) -> Uplink {
        // Prefer a real gateway over a gateway-less default, as darwin.bash's collect_gateways
        // skips `link#` defaults.
        let gateway = self
            .routes
            .iter()
            .filter(|r| r.dest.prefix_len() == 0 && !r.scoped && r.iface != tunnel_iface)
            .filter_map(|r| match r.next_hop {
                NextHop::Gateway(g) if !g.is_unspecified() => Some((r.metric, g)),
                _ => None,
            })
            .min_by_key(|(metric, _)| *metric);
        if let Some((_, g)) = gateway {
            return Uplink::Gateway(g);
        }
        match self.default_route(tunnel_iface) {
            Some(r) if r.next_hop == NextHop::OnLink && point_to_point(&r.iface) => {
                r.iface.parse().map_or(Uplink::Unusable, Uplink::Interface)
            }
            _ => Uplink::Unusable,
        }
    }

    /// The route `addr` takes when the tunnel is not in the way: the longest matching prefix
    /// (lowest metric among equals), ignoring routes through `tunnel_iface`, scoped routes,
    /// and host routes through a gateway or blackhole (pins, ours or anyone's, which are the
    /// very thing being decided).
    pub fn lookup(&self, addr: Ipv4Addr, tunnel_iface: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.dest.contains(&addr) && !r.scoped && r.iface != tunnel_iface)
            .filter(|r| !(r.dest.prefix_len() == 32 && r.next_hop != NextHop::OnLink))
            .max_by(|a, b| {
                a.dest
                    .prefix_len()
                    .cmp(&b.dest.prefix_len())
                    .then(b.metric.cmp(&a.metric))
            })
    }

    /// Whether `addr` leaves through the default route, so a full tunnel would capture it and
    /// it needs a pin: never loopback, link-local, multicast, the broadcast address, anything
    /// in the mesh (`mesh`), or anything a more specific route (a LAN, another VPN's subnet)
    /// already carries. With no route at all, the address is unreachable and is not pinned.
    pub fn reached_via_default(&self, addr: Ipv4Addr, mesh: Ipv4Net, tunnel_iface: &str) -> bool {
        if excluded(addr, mesh) {
            return false;
        }
        self.lookup(addr, tunnel_iface)
            .is_some_and(|r| r.dest.prefix_len() == 0)
    }

    /// The subset of `candidates` that need a pin, in order, without duplicates. With
    /// `unrouted_too`, addresses no route reaches at all are included (to be blackholed on
    /// macOS, so the halves cannot capture WireGuard's own packets when the uplink returns
    /// only later).
    pub fn pins_needed(
        &self,
        candidates: &[Ipv4Addr],
        mesh: Ipv4Net,
        tunnel_iface: &str,
        unrouted_too: bool,
    ) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = Vec::new();
        for addr in candidates {
            let wanted = self.reached_via_default(*addr, mesh, tunnel_iface)
                || (unrouted_too
                    && !excluded(*addr, mesh)
                    && self.lookup(*addr, tunnel_iface).is_none());
            if !out.contains(addr) && wanted {
                out.push(*addr);
            }
        }
        out
    }

    /// Whether both IPv4 halves (`0.0.0.0/1`, `128.0.0.0/1`) go into `tunnel_iface`: false
    /// after a Windows reboot (`store=active` routes are gone) or a utun re-creation.
    pub fn has_tunnel_halves(&self, tunnel_iface: &str) -> bool {
        let halves: Vec<&Route> = self
            .routes
            .iter()
            .filter(|r| r.iface == tunnel_iface && is_half(&r.dest))
            .collect();
        ["0.0.0.0/1", "128.0.0.0/1"].iter().all(|h| {
            let h: Ipv4Net = h.parse().expect("literal halves");
            halves.iter().any(|r| r.dest == h)
        })
    }

    /// Whether both IPv6 halves (`::/1`, `8000::/1`) go into the tunnel; `None` when the
    /// IPv6 table was not read.
    pub fn has_tunnel_halves_v6(&self) -> Option<bool> {
        let v6 = self.tunnel_v6.as_ref()?;
        Some(["::/1", "8000::/1"].iter().all(|h| {
            let h: Ipv6Net = h.parse().expect("literal halves");
            v6.contains(&h)
        }))
    }

    /// Whether `addr` has a host route of any kind (a pin through an old gateway, a
    /// blackhole), which a new pin must replace: macOS `route add` refuses a duplicate.
    pub fn has_host_route(&self, addr: Ipv4Addr) -> bool {
        self.routes
            .iter()
            .any(|r| r.dest == Ipv4Net::from(addr) && !r.scoped)
    }

    /// Whether `addr` has a host route matching `uplink` (through that gateway, out of that
    /// interface, or a blackhole when nothing is usable).
    pub fn has_pin(&self, addr: Ipv4Addr, uplink: &Uplink) -> bool {
        self.routes.iter().any(|r| {
            r.dest == Ipv4Net::from(addr)
                && match (uplink, &r.next_hop) {
                    (Uplink::Gateway(g), NextHop::Gateway(h)) => g == h,
                    (Uplink::Interface(i), NextHop::OnLink) => i.as_str() == r.iface,
                    (Uplink::Unusable, NextHop::Blackhole) => true,
                    _ => false,
                }
        })
    }
}

/// A recorded output from `tests/fixtures/OS/NAME`, without its `#!` provenance lines:
/// exactly the text the parsers see.
#[cfg(test)]
pub(crate) fn fixture(os: &str, name: &str) -> String {
    let path = format!("{}/tests/fixtures/{os}/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with("#!"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dest: &str, hop: NextHop, iface: &str, metric: u32) -> Route {
        Route {
            dest: dest.parse().unwrap(),
            next_hop: hop,
            iface: iface.into(),
            metric,
            scoped: false,
        }
    }

    fn gw(s: &str) -> NextHop {
        NextHop::Gateway(s.parse().unwrap())
    }

    fn home() -> RouteTable {
        RouteTable {
            tunnel_v6: None,
            routes: vec![
                route("0.0.0.0/0", gw("192.168.1.1"), "en0", 0),
                route("127.0.0.0/8", NextHop::OnLink, "lo0", 0),
                route("192.168.1.0/24", NextHop::OnLink, "en0", 0),
                route("10.100.0.0/16", NextHop::OnLink, "utun3", 0),
                route("0.0.0.0/1", NextHop::OnLink, "utun3", 0),
                route("128.0.0.0/1", NextHop::OnLink, "utun3", 0),
                route("198.18.0.7/32", gw("192.168.1.1"), "en0", 0),
            ],
        }
    }

    #[test]
    fn only_addresses_behind_the_default_route_are_pinned() {
        let mesh: Ipv4Net = "10.100.0.0/16".parse().unwrap();
        let t = home();
        let addrs: Vec<Ipv4Addr> = [
            "198.18.0.7",   // the exit's endpoint, already pinned: still needs its pin
            "203.0.113.9",  // another peer on the internet
            "192.168.1.40", // a server on the LAN
            "127.0.0.1",
            "10.100.0.9", // inside the mesh
            "169.254.1.1",
            "203.0.113.9", // duplicate
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let pins: Vec<String> = t
            .pins_needed(&addrs, mesh, "utun3", false)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(pins, ["198.18.0.7", "203.0.113.9"]);
    }

    #[test]
    fn the_tunnel_halves_are_never_taken_for_the_internet_route() {
        let mut t = home();
        t.routes.retain(|r| r.dest.prefix_len() != 0); // no default route at all
        let mesh: Ipv4Net = "10.100.0.0/16".parse().unwrap();
        assert!(!t.reached_via_default("203.0.113.9".parse().unwrap(), mesh, "utun3"));
        assert_eq!(t.uplink("utun3", |_| true), Uplink::Unusable);
    }

    #[test]
    fn uplink_prefers_a_gateway_and_never_uses_0_0_0_0() {
        assert_eq!(
            home().uplink("utun3", |_| false),
            Uplink::Gateway("192.168.1.1".parse().unwrap())
        );
        let ppp = RouteTable {
            routes: vec![route("0.0.0.0/0", NextHop::OnLink, "ppp0", 0)],
            tunnel_v6: None,
        };
        assert_eq!(
            ppp.uplink("utun3", |i| i.starts_with("ppp")),
            Uplink::Interface("ppp0".parse().unwrap())
        );
        assert_eq!(ppp.uplink("utun3", |_| false), Uplink::Unusable);
        let zero = RouteTable {
            routes: vec![route("0.0.0.0/0", gw("0.0.0.0"), "en0", 0)],
            tunnel_v6: None,
        };
        assert_eq!(zero.uplink("utun3", |_| false), Uplink::Unusable);
    }

    #[test]
    fn halves_and_pins_are_observed() {
        let t = home();
        assert!(t.has_tunnel_halves("utun3"));
        assert!(!t.has_tunnel_halves("utun4"));
        let g = Uplink::Gateway("192.168.1.1".parse().unwrap());
        assert!(t.has_pin("198.18.0.7".parse().unwrap(), &g));
        assert!(!t.has_pin("198.18.0.1".parse().unwrap(), &g));
        let moved = Uplink::Gateway("10.0.0.1".parse().unwrap());
        assert!(!t.has_pin("198.18.0.7".parse().unwrap(), &moved));
    }
}
