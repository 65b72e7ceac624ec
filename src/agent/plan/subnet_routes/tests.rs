//! The sync plans of a node using subnet routes, on every OS, against
//! `tests/golden_subnet_routes/OS.txt`: accepting a LAN two routers offer (through the
//! primary), the primary leaving (the standby takes the prefix), and `--accept-routes` off.
//! `UPDATE_GOLDEN=1` rewrites the files after you checked the diff.

use super::super::{plan, PlanInput, SyncPlan};
use crate::agent::observe::host::HostFacts;
use crate::agent::state::config::{Applied, Assignment, ClientConfig};
use crate::keys::PrivateKey;
use crate::os::wgdump::{Dump, DumpInterface, DumpPeer};
use crate::os::TargetOs;
use crate::proto::model::PeerInfo;
use crate::types::PeerId;
use ipnet::IpNet;

/// A fixed key per seed, so the golden files stay the same from run to run.
fn key(seed: u8) -> PrivateKey {
    use base64::Engine as _;
    PrivateKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([seed; 32])).unwrap()
}

fn router(name: &str, seed: u8, last: u8, routes: &[&str]) -> PeerInfo {
    let mut peer = PeerInfo {
        endpoint: Some(format!("198.18.0.{last}:51820").parse().unwrap()),
        ..PeerInfo::for_test(key(seed).public_key(), name, last)
    };
    peer.allowed_ips
        .extend(routes.iter().map(|r| r.parse::<IpNet>().unwrap()));
    peer
}

fn config(os: TargetOs) -> ClientConfig {
    let mut config = ClientConfig::generate("wg0".parse().unwrap());
    config.private_key = key(1);
    config.accept_routes = true;
    let assignment = Assignment {
        peer_id: PeerId::for_key(&config.private_key.public_key()),
        assigned_ip: "10.100.0.2".parse().unwrap(),
        network_cidr: "10.100.0.0/16".parse().unwrap(),
        server_public_key: key(2).public_key(),
        dns_name: None,
    };
    config.applied = Some(Applied {
        os: os.as_str().into(),
        interface: if os == TargetOs::Macos {
            "utun3"
        } else {
            "wg0"
        }
        .into(),
        address: Some(assignment.assigned_ip),
        ..Applied::default()
    });
    config.assignment = Some(assignment);
    config
}

/// The interface up with `peers` as WireGuard has them after the previous plan.
fn facts(config: &ClientConfig, peers: &[(u8, Vec<&str>)]) -> HostFacts {
    HostFacts {
        dump: Some(Dump {
            interface: DumpInterface {
                private_key: Some(config.private_key.clone()),
                public_key: Some(config.private_key.public_key()),
                listen_port: config.listen_port,
                fwmark: None,
            },
            peers: peers
                .iter()
                .map(|(seed, allowed)| DumpPeer {
                    public_key: key(*seed).public_key(),
                    has_preshared_key: false,
                    endpoint: None,
                    allowed_ips: allowed.iter().map(|a| a.parse().unwrap()).collect(),
                    latest_handshake: None,
                    transfer_rx: 0,
                    transfer_tx: 0,
                    persistent_keepalive: Some(25),
                })
                .collect(),
        }),
        ..HostFacts::default()
    }
}

fn decide(
    os: TargetOs,
    config: &mut ClientConfig,
    peers: &[PeerInfo],
    facts: &HostFacts,
) -> String {
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
    let p: SyncPlan = plan(&input, facts);
    assert!(p.failure.is_none(), "{:?}", p.failure);
    config.applied = p.applied.clone();
    p.steps
        .iter()
        .flat_map(|s| s.plan.commands.iter().map(|c| c.render()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn transcript(os: TargetOs) -> String {
    let mut config = config(os);
    let (a, b) = (
        router("gw-a", 5, 5, &["192.168.10.0/24", "fd00:10::/64"]),
        router("gw-b", 9, 9, &["192.168.10.0/24"]),
    );
    let mut out = String::from("## accept routes: each prefix through its primary router\n");
    let empty = facts(&config, &[]);
    out += &decide(os, &mut config, &[a.clone(), b.clone()], &empty);
    out += "\n## gw-a leaves the list: gw-b carries 192.168.10.0/24\n";
    let before = facts(
        &config,
        &[
            (5, vec!["10.100.0.5/32", "192.168.10.0/24", "fd00:10::/64"]),
            (9, vec!["10.100.0.9/32"]),
        ],
    );
    out += &decide(os, &mut config, std::slice::from_ref(&b), &before);
    out += "\n## --accept-routes off: the route goes\n";
    config.accept_routes = false;
    let before = facts(&config, &[(9, vec!["10.100.0.9/32", "192.168.10.0/24"])]);
    out += &decide(os, &mut config, &[b], &before);
    out.push('\n');
    out
}

#[test]
fn accepted_routes_follow_the_primary_router_on_every_os() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    for os in [TargetOs::Linux, TargetOs::Macos, TargetOs::Windows] {
        let path = format!(
            "{}/tests/golden_subnet_routes/{os}.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        let actual = transcript(os);
        if update {
            std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}; UPDATE_GOLDEN=1 creates it:\n{actual}"));
        assert_eq!(
            expected, actual,
            "{path} differs (UPDATE_GOLDEN=1 rewrites it)"
        );
    }
}

/// A gateway without `--accept-routes` whose device is granted one host behind gw-a: the
/// host joins gw-a's AllowedIPs, and no route of the gateway's own table leads there.
#[test]
fn a_gateways_device_route_joins_the_routers_allowed_ips_and_no_route_of_its_own() {
    let mut config = config(TargetOs::Linux);
    config.accept_routes = false;
    let a = router("gw-a", 5, 5, &["192.168.10.10/32"]);
    let routes = [crate::proto::devices::DeviceRoute {
        prefix: "192.168.10.10/32".parse().unwrap(),
        router: a.id.clone(),
    }];
    let input = PlanInput {
        os: TargetOs::Linux,
        config: &config,
        peers: std::slice::from_ref(&a),
        list_unchanged: false,
        dry_run: false,
        paths: &Default::default(),
        live: false,
        hold_silent: false,
        device_routes: &routes,
    };
    let p: SyncPlan = plan(&input, &facts(&config, &[]));
    assert!(p.failure.is_none(), "{:?}", p.failure);
    let text: String = p
        .steps
        .iter()
        .flat_map(|s| s.plan.commands.iter().map(|c| c.render() + "\n"))
        .collect();
    assert!(
        text.contains("allowed-ips 10.100.0.5/32,192.168.10.10/32"),
        "{text}"
    );
    assert!(!text.contains("route add 192.168.10.10"), "{text}");
    assert!(!text.contains("route replace 192.168.10.10"), "{text}");
    assert!(p.applied.unwrap().routes.is_empty());
    // Without the device route, gw-a carries only its mesh address.
    let input = PlanInput {
        device_routes: &[],
        ..input
    };
    let p = plan(&input, &facts(&config, &[]));
    let text: String = p
        .steps
        .iter()
        .flat_map(|s| s.plan.commands.iter().map(|c| c.render() + "\n"))
        .collect();
    assert!(!text.contains("192.168.10.10"), "{text}");
}
