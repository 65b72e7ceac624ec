//! The agent's decision, as a pure function: from the configuration, the server's peer list
//! and the [`HostFacts`] read beforehand, the ordered plans that make the host match, and
//! what is recorded as applied after each of them. Nothing here reads the host or runs a
//! command, so every branch (rebuild, exit node, full tunnel, routes) is tested on data.
//!
//! The shape follows tailscale's `Router.Set(cfg)` and wg-quick's `cmd_up`: read the host
//! once, then one straight sequence: the interface (reused, or rebuilt from scratch), the
//! full tunnel's removal, the peer diff, the full tunnel's addition, exit-node NAT, routes.

use super::observe::host::HostFacts;

mod build;
mod builder;
mod route_check;
mod steps;
mod subnet_routes;
mod subnet_routes_undo;
mod tunnel;
mod undo;

pub use super::decide::stagger::{defer_crossing_handshakes, silent_deferred, stuck_deferred};
use builder::Builder;
pub use builder::{check_interface_name, interface_to_read, PlanInput};
pub use route_check::route_check;
pub use steps::{HostCheck, Step, SyncPlan, SyncSummary};
pub use undo::undo;

/// Decides one sync. Never fails by itself: a refusal is returned in
/// [`SyncPlan::failure`] after the steps decided before it.
pub fn plan(input: &PlanInput<'_>, facts: &HostFacts) -> SyncPlan {
    let mut b = Builder {
        os: input.os,
        dry_run: input.dry_run,
        steps: Vec::new(),
        rec: input.config.applied.clone(),
        summary: SyncSummary::default(),
        awaiting_name: None,
    };
    let failure = b.build(input, facts).err();
    SyncPlan {
        steps: b.steps,
        applied: b.rec,
        summary: b.summary,
        awaiting_name: b.awaiting_name,
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::state::config::{Applied, ClientConfig};
    use crate::os::TargetOs;
    use crate::proto::model::PeerInfo;

    use crate::agent::decide::desired::{desired_peers, extra_routes};
    use crate::agent::state::config::Assignment;
    use crate::keys::PrivateKey;
    use crate::os::wgdump::{Dump, DumpInterface};
    use crate::os::PeerSpec;
    use crate::types::PeerId;
    use ipnet::Ipv4Net;
    use std::net::{IpAddr, Ipv4Addr};

    fn peer_spec(allowed: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: PrivateKey::generate().public_key(),
            endpoint: None,
            allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
            persistent_keepalive: None,
        }
    }

    fn info(name: &str, last: u8, exit: bool) -> PeerInfo {
        let mut peer = PeerInfo {
            endpoint: Some(format!("198.18.0.{last}:51820").parse().unwrap()),
            exit_node: exit,
            ..PeerInfo::for_test(PrivateKey::generate().public_key(), name, last)
        };
        if exit {
            peer.allowed_ips.push("0.0.0.0/0".parse().unwrap());
        }
        peer
    }

    fn config() -> ClientConfig {
        let mut config = ClientConfig::generate("wg0".parse().unwrap());
        config.assignment = Some(Assignment {
            peer_id: PeerId::for_key(&config.private_key.public_key()),
            assigned_ip: "10.100.0.2".parse().unwrap(),
            network_cidr: "10.100.0.0/16".parse().unwrap(),
            server_public_key: PrivateKey::generate().public_key(),
            dns_name: None,
        });
        config
    }

    /// The interface as `wg show dump` shows it after this config's interface came up.
    fn up(config: &ClientConfig) -> HostFacts {
        HostFacts {
            dump: Some(Dump {
                interface: DumpInterface {
                    private_key: Some(config.private_key.clone()),
                    public_key: Some(config.private_key.public_key()),
                    listen_port: config.listen_port,
                    fwmark: None,
                },
                peers: Vec::new(),
            }),
            ..HostFacts::default()
        }
    }

    fn applied(config: &ClientConfig) -> Applied {
        Applied {
            os: "linux".into(),
            interface: "wg0".into(),
            address: Some(config.assignment.as_ref().unwrap().assigned_ip),
            ..Applied::default()
        }
    }

    fn decide(
        os: TargetOs,
        config: &ClientConfig,
        peers: &[PeerInfo],
        facts: &HostFacts,
    ) -> SyncPlan {
        let input = PlanInput {
            os,
            config,
            peers,
            list_unchanged: false,
            dry_run: false,
            paths: &Default::default(),
            live: false,
            hold_silent: false,
            device_routes: &[],
        };
        plan(&input, facts)
    }

    /// Every command of every step, one rendered line each (tolerated failures included).
    fn lines(p: &SyncPlan) -> Vec<String> {
        p.steps
            .iter()
            .flat_map(|s| s.plan.commands.iter().map(|c| c.render()))
            .collect()
    }

    #[test]
    fn a_missing_interface_is_created_configured_and_recorded() {
        let config = config();
        let peers = [info("a", 1, false)];
        let p = decide(TargetOs::Linux, &config, &peers, &HostFacts::default());
        assert!(p.failure.is_none() && p.awaiting_name.is_none());
        let rendered = lines(&p);
        assert!(
            rendered[0].starts_with("ip link delete dev wg0"),
            "{rendered:#?}"
        );
        assert!(rendered[1].starts_with("ip link add dev wg0 type wireguard"));
        assert!(rendered
            .iter()
            .any(|l| l == "ip -4 address add 10.100.0.2/32 dev wg0"));
        let last = rendered.last().unwrap();
        assert!(last.starts_with(&format!("wg set wg0 peer {}", peers[0].public_key)));
        assert!(p.summary.created_interface);
        assert_eq!(p.summary.added, vec![peers[0].public_key.to_base64()]);
        assert_eq!(p.applied, Some(applied(&config)));
        // The fresh record is saved right after the interface is configured, before peers.
        let saved = p.steps.iter().position(|s| s.record.is_some()).unwrap();
        let peers_step = p.steps.iter().rposition(|s| !s.plan.is_empty()).unwrap();
        assert!(saved < peers_step);
    }

    #[test]
    fn a_matching_interface_gets_only_the_peer_diff() {
        let mut config = config();
        config.applied = Some(applied(&config));
        let peers = [info("a", 1, false)];
        let p = decide(TargetOs::Linux, &config, &peers, &up(&config));
        let rendered = lines(&p);
        assert_eq!(rendered.len(), 1, "{rendered:#?}");
        assert!(rendered[0].starts_with("wg set wg0 peer"));
        assert!(!p.summary.created_interface);
        assert_eq!(p.applied, config.applied);
        assert!(p.steps.iter().all(|s| s.record.is_none()));
    }

    #[test]
    fn an_interface_with_another_key_is_rebuilt_after_undoing_what_was_recorded() {
        let mut config = config();
        let mut old = applied(&config);
        old.routes = vec!["192.0.2.0/24".parse().unwrap()];
        config.applied = Some(old);
        let mut facts = up(&config);
        facts.dump.as_mut().unwrap().interface.public_key =
            Some(PrivateKey::generate().public_key());
        let p = decide(TargetOs::Linux, &config, &[], &facts);
        let rendered = lines(&p);
        assert!(
            rendered[0].starts_with("ip -4 route del 192.0.2.0/24 dev wg0"),
            "{rendered:#?}"
        );
        assert!(rendered
            .iter()
            .any(|l| l.starts_with("ip link add dev wg0")));
        // Forgotten first (the old interface is gone), then the fresh one recorded.
        let records: Vec<_> = p.steps.iter().filter_map(|s| s.record.clone()).collect();
        assert_eq!(records, vec![None, Some(applied(&config))]);
        assert!(p.applied.unwrap().routes.is_empty());
    }

    #[test]
    fn a_chosen_exit_node_gets_the_full_tunnel_after_the_peers_and_it_is_recorded() {
        let mut config = config();
        config.applied = Some(Applied {
            os: "macos".into(),
            ..applied(&config)
        });
        config.use_exit_node = Some("exit".into());
        let exit = info("exit", 7, true);
        // macOS pins through the default route's gateway as the routing table shows it.
        let table = crate::os::observe_macos::parse_netstat(
            "default            198.18.0.254       UGScg                 en0\n",
        );
        let facts = HostFacts {
            routes: Some(table),
            server_ip: Some("198.18.0.1".parse().unwrap()),
            ..up(&config)
        };
        let p = decide(
            TargetOs::Macos,
            &config,
            std::slice::from_ref(&exit),
            &facts,
        );
        assert!(p.failure.is_none());
        let rendered = lines(&p);
        let tunnel = p.applied.unwrap().full_tunnel.unwrap();
        assert_eq!(tunnel.exit_public_key, exit.public_key);
        let pinned = tunnel.pinned.clone().unwrap();
        assert_eq!(
            pinned.uplink,
            crate::os::route_table::Uplink::Gateway("198.18.0.254".parse().unwrap())
        );
        assert_eq!(
            pinned.pins,
            vec![
                "198.18.0.1".parse::<Ipv4Addr>().unwrap(),
                "198.18.0.7".parse().unwrap()
            ]
        );
        assert_eq!(
            tunnel.keep_outside,
            vec![
                "198.18.0.1".parse::<IpAddr>().unwrap(),
                "198.18.0.7".parse().unwrap()
            ]
        );
        let peer = rendered
            .iter()
            .position(|l| l.contains("allowed-ips 10.100.0.7/32,0.0.0.0/0"));
        let half = rendered.iter().position(|l| l.contains("0.0.0.0/1"));
        assert!(peer.unwrap() < half.unwrap(), "{rendered:#?}");

        // Choosing none: the tunnel comes down before the peer loses its default route.
        let mut config = config.clone();
        config.applied.as_mut().unwrap().full_tunnel = Some(tunnel);
        config.use_exit_node = None;
        let p = decide(TargetOs::Macos, &config, &[exit], &facts);
        let rendered = lines(&p);
        assert!(rendered[0].contains("0.0.0.0/1"), "{rendered:#?}");
        assert!(p.applied.unwrap().full_tunnel.is_none());
    }

    #[test]
    fn a_peer_whose_relay_moved_is_removed_then_added_back_at_the_new_relay() {
        let mut config = config();
        config.applied = Some(applied(&config));
        let (moved, steady) = (info("moved", 7, false), info("steady", 8, false));
        let old_relay: std::net::SocketAddr = "198.18.0.1:3478".parse().unwrap();
        let new_relay: std::net::SocketAddr = "198.18.0.2:3478".parse().unwrap();
        let mut facts = up(&config);
        for p in [&moved, &steady] {
            facts
                .dump
                .as_mut()
                .unwrap()
                .peers
                .push(crate::os::wgdump::DumpPeer {
                    public_key: p.public_key,
                    has_preshared_key: false,
                    endpoint: Some(old_relay),
                    allowed_ips: p.allowed_ips.clone(),
                    latest_handshake: None,
                    transfer_rx: 0,
                    transfer_tx: 0,
                    persistent_keepalive: Some(25),
                });
        }
        let choice = |endpoint, restart| crate::agent::decide::path::Choice {
            endpoint: Some(endpoint),
            keepalive: 25,
            mode: crate::agent::decide::path::Mode::Relay,
            restart,
        };
        let paths = std::collections::HashMap::from([
            (moved.public_key, choice(new_relay, true)),
            (steady.public_key, choice(old_relay, false)),
        ]);
        for live in [false, true] {
            let input = PlanInput {
                os: TargetOs::Linux,
                config: &config,
                peers: &[moved.clone(), steady.clone()],
                list_unchanged: true,
                dry_run: false,
                paths: &paths,
                live,
                hold_silent: false,
                device_routes: &[],
            };
            let rendered = lines(&plan(&input, &facts));
            let key = moved.public_key.to_base64();
            assert_eq!(
                rendered,
                vec![
                    format!("wg set wg0 peer {key} remove"),
                    format!(
                        "wg set wg0 peer {key} endpoint {new_relay} allowed-ips 10.100.0.7/32 \
                         persistent-keepalive 25"
                    ),
                ],
                "live: {live}"
            );
        }
    }

    #[test]
    fn windows_checks_the_old_service_and_the_folder_acl_before_the_key_is_written() {
        let config = config();
        let p = decide(TargetOs::Windows, &config, &[], &HostFacts::default());
        // Each step as one line: its commands, its file writes, or the check it makes.
        let order: Vec<String> = p
            .steps
            .iter()
            .flat_map(|s| {
                let mut out: Vec<String> = s.plan.files.iter().map(|f| f.render()).collect();
                out.extend(s.plan.commands.iter().map(|c| c.render_argv()));
                out.extend(s.check.iter().map(|c| format!("check {c:?}")));
                out
            })
            .collect();
        let at = |needle: &str| {
            order
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {order:#?}"))
        };
        let steps = [
            at("/uninstalltunnelservice"),
            at("check ServiceGone"),
            at("CreateDirectory"),
            at("check ConfigDirProtected"),
            at("# write"),
            at("/installtunnelservice"),
        ];
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{order:#?}");
    }

    #[test]
    fn windows_refuses_reserved_names_before_any_step() {
        let mut config = config();
        config.interface = "nul.x".parse().unwrap();
        let p = decide(TargetOs::Windows, &config, &[], &HostFacts::default());
        assert!(p.steps.is_empty());
        let failure = p.failure.unwrap().to_string();
        assert!(failure.contains("reserved device name"), "{failure}");
        // The same name is fine where it is not reserved.
        let p = decide(TargetOs::Linux, &config, &[], &HostFacts::default());
        assert!(p.failure.is_none());
    }

    #[test]
    fn without_a_routing_table_windows_and_macos_plan_the_halves_and_no_pin() {
        // Planning for another OS: no reader, no table; pins depend on that machine's table.
        for os in [TargetOs::Windows, TargetOs::Macos] {
            let mut config = config();
            config.applied = Some(Applied {
                os: os.as_str().into(),
                ..applied(&config)
            });
            config.use_exit_node = Some("exit".into());
            let exit = info("exit", 7, true);
            let p = decide(os, &config, std::slice::from_ref(&exit), &up(&config));
            let rendered = lines(&p).join("\n");
            assert!(
                rendered.contains("0.0.0.0/1") && rendered.contains("128.0.0.0/1"),
                "{rendered}"
            );
            assert!(
                !rendered.contains("MASK") && !rendered.contains("-gateway"),
                "{rendered}"
            );
            assert!(!rendered.contains("blackhole"), "{rendered}");
        }
    }

    #[test]
    fn an_exit_node_without_a_default_route_fails_after_the_peers_are_applied() {
        let mut config = config();
        config.applied = Some(applied(&config));
        config.exit_node = true;
        let peers = [info("a", 1, false)];
        let p = decide(TargetOs::Linux, &config, &peers, &up(&config));
        let failure = p.failure.as_ref().unwrap().to_string();
        assert!(failure.contains("needs a default route"), "{failure}");
        assert!(lines(&p)[0].starts_with("wg set wg0 peer"));

        let facts = HostFacts {
            default_dev: Some("eth0".into()),
            nft: true,
            ..up(&config)
        };
        let p = decide(TargetOs::Linux, &config, &peers, &facts);
        assert!(p.failure.is_none());
        assert!(
            lines(&p).iter().any(|l| l.starts_with("nft ")),
            "{:#?}",
            lines(&p)
        );
        let nat = p.applied.unwrap().nat.unwrap();
        assert_eq!(
            (nat.out_iface.as_str(), nat.firewall.as_str()),
            ("eth0", "nftables")
        );
    }

    #[test]
    fn macos_plans_the_rest_once_wireguard_go_named_the_interface() {
        let config = config();
        let p = decide(TargetOs::Macos, &config, &[], &HostFacts::default());
        assert_eq!(p.awaiting_name, Some("wg0".parse().unwrap()));
        assert!(lines(&p).last().unwrap().contains("wireguard-go utun"));
        let facts = HostFacts {
            created_name: Some("utun7".parse().unwrap()),
            ..HostFacts::default()
        };
        let p = decide(TargetOs::Macos, &config, &[], &facts);
        assert!(p.awaiting_name.is_none());
        assert!(lines(&p).iter().all(|l| !l.contains("wireguard-go")));
        assert!(lines(&p).iter().any(|l| l.contains("utun7")));
        assert_eq!(p.applied.unwrap().interface, "utun7");
        assert_eq!(p.summary.interface, "utun7");
    }

    #[test]
    fn the_tunnel_mtu_follows_each_os_reference_unless_given() {
        let mut config = config();
        // macOS: darwin.bash's set_mtu, the uplink's MTU - 80.
        let facts = HostFacts {
            created_name: Some("utun7".parse().unwrap()),
            uplink_mtu: Some(1492),
            ..HostFacts::default()
        };
        let p = decide(TargetOs::Macos, &config, &[], &facts);
        assert!(lines(&p).contains(&"ifconfig utun7 mtu 1412".to_string()));
        // Windows: no MTU line, so wireguard-windows' MTU monitor follows the uplink.
        let file = |p: &SyncPlan| {
            let f = &p
                .steps
                .iter()
                .find(|s| !s.plan.files.is_empty())
                .unwrap()
                .plan
                .files[0];
            String::from_utf8(f.contents.as_bytes().to_vec()).unwrap()
        };
        let p = decide(TargetOs::Windows, &config, &[], &HostFacts::default());
        assert!(!file(&p).contains("MTU"), "{}", file(&p));
        // --mtu wins everywhere.
        config.mtu = Some(1380);
        let p = decide(TargetOs::Windows, &config, &[], &HostFacts::default());
        assert!(file(&p).contains("MTU = 1380\n"), "{}", file(&p));
        let p = decide(TargetOs::Macos, &config, &[], &facts);
        assert!(lines(&p).contains(&"ifconfig utun7 mtu 1380".to_string()));
        let p = decide(TargetOs::Linux, &config, &[], &HostFacts::default());
        assert!(
            lines(&p).iter().any(|l| l.contains("mtu 1380 up")),
            "{:?}",
            lines(&p)
        );
    }

    #[test]
    fn a_dry_run_records_nothing() {
        let config = config();
        let input = PlanInput {
            os: TargetOs::Macos,
            config: &config,
            peers: &[],
            list_unchanged: true,
            dry_run: true,
            paths: &Default::default(),
            live: false,
            hold_silent: false,
            device_routes: &[],
        };
        let p = plan(&input, &HostFacts::default());
        assert!(p.steps.iter().all(|s| s.record.is_none()));
        assert_eq!(p.applied, None);
        assert_eq!(p.summary.interface, "utunN");
        assert!(p.summary.list_unchanged);
    }

    #[test]
    fn undo_removes_what_is_recorded_then_forgets_it() {
        let mut config = config();
        assert!(undo(TargetOs::Linux, &config, true).unwrap().is_empty());
        config.applied = Some(applied(&config));
        let steps = undo(TargetOs::Linux, &config, true).unwrap();
        assert_eq!(steps.last().unwrap().record, Some(None));
        assert!(undo(TargetOs::Windows, &config, true).unwrap().is_empty());
    }

    #[test]
    fn extra_routes_skip_the_mesh_and_never_include_a_default_route() {
        let mesh: Ipv4Net = "10.100.0.0/16".parse().unwrap();
        let mesh6: ipnet::Ipv6Net = "fd12:3456:789a::/96".parse().unwrap();
        let desired = [
            peer_spec(&["10.100.0.2/32", "fd12:3456:789a::a64:2/128", "192.0.2.0/24"]),
            peer_spec(&["10.100.0.3/32", "0.0.0.0/0", "::/0"]),
        ];
        let routes: Vec<String> = extra_routes(&desired, mesh, mesh6)
            .iter()
            .map(|n| n.to_string())
            .collect();
        // A default route here would loop WireGuard's own packets into the tunnel.
        assert_eq!(routes, vec!["192.0.2.0/24"]);
    }

    #[test]
    fn only_the_chosen_exit_node_gets_a_default_route() {
        let (a, b) = (info("a", 8, true), info("b", 9, true));
        let peers = [a.clone(), b.clone()];
        let none = desired_peers(&peers, None);
        assert!(none
            .iter()
            .all(|p| p.allowed_ips.iter().all(|n| n.prefix_len() != 0)));
        let chosen = desired_peers(&peers, Some(&b.public_key));
        assert_eq!(chosen[0].allowed_ips.len(), 1);
        assert_eq!(chosen[1].allowed_ips.len(), 2);
    }
}
