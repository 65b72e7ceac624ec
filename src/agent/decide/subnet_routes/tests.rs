use super::*;
use crate::keys::PrivateKey;

fn mesh() -> MeshNets {
    MeshNets {
        v4: "10.100.0.0/24".parse().unwrap(),
        v6: "fd7a:1::/64".parse().unwrap(),
    }
}

fn peer(host: &str, last: u8, routes: &[&str]) -> PeerInfo {
    let mut peer = PeerInfo::for_test(PrivateKey::generate().public_key(), host, last);
    peer.allowed_ips
        .push(format!("fd7a:1::{last}/128").parse().unwrap());
    peer.allowed_ips
        .extend(routes.iter().map(|r| r.parse::<IpNet>().unwrap()));
    peer
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn without_accept_routes_no_subnet_route_is_used() {
    let peers = vec![peer("gw", 5, &["198.18.10.0/24"])];
    let (used, accepted) = select(&peers, false, &[], mesh());
    assert!(accepted.is_empty());
    assert_eq!(used[0].allowed_ips.len(), 2, "only the mesh addresses stay");
}

#[test]
fn a_prefix_two_routers_offer_goes_through_the_lowest_address_and_fails_over() {
    let peers = vec![
        peer("gw-b", 9, &["198.18.10.0/24"]),
        peer("gw-a", 5, &["198.18.10.0/24", "fd00:10::/64"]),
    ];
    let (used, accepted) = select(&peers, true, &[], mesh());
    assert_eq!(accepted.len(), 2);
    let v4 = accepted
        .iter()
        .find(|a| a.prefix == net("198.18.10.0/24"))
        .unwrap();
    assert_eq!(
        (v4.router.as_str(), v4.standby.clone()),
        ("gw-a", vec!["gw-b".to_owned()])
    );
    assert!(
        !used[0].allowed_ips.contains(&net("198.18.10.0/24")),
        "gw-b stands by"
    );
    assert!(used[1].allowed_ips.contains(&net("198.18.10.0/24")));
    // gw-a leaves the list: gw-b carries the prefix.
    let (used, accepted) = select(&peers[..1], true, &[], mesh());
    assert_eq!(accepted[0].router, "gw-b");
    assert!(used[0].allowed_ips.contains(&net("198.18.10.0/24")));
}

#[test]
fn a_router_never_accepts_its_own_prefix_from_another() {
    let peers = vec![peer("gw-b", 9, &["198.18.10.0/24"])];
    let (used, accepted) = select(&peers, true, &[net("198.18.10.0/24")], mesh());
    assert!(accepted.is_empty());
    assert_eq!(used[0].allowed_ips.len(), 2);
}

#[test]
fn a_router_lets_the_peers_it_sees_in_and_copies_routes_to_its_table() {
    let mut config = ClientConfig::generate("wg0".parse().unwrap());
    assert!(router_state(&config, &[], mesh()).is_none());
    config.subnet_routes.advertise = vec![net("198.18.10.0/24")];
    config.subnet_routes.to_table = Some(200);
    let peers = vec![peer("laptop", 7, &[]), peer("gw-b", 9, &["198.18.20.0/24"])];
    let state = router_state(&config, &peers, mesh()).unwrap();
    assert_eq!(state.prefixes, vec![net("198.18.10.0/24")]);
    assert_eq!(state.access.len(), 1, "{:?}", state.access);
    assert_eq!(state.access[0].prefixes, vec![net("198.18.10.0/24")]);
    assert_eq!(
        state.access[0].sources.len(),
        4,
        "two /32s and two /128s: {:?}",
        state.access
    );
    assert!(state.snat);
    let (_, accepted) = select(&peers, true, &config.subnet_routes.advertise, mesh());
    let table = table_routes(&config, &accepted, mesh()).unwrap();
    assert_eq!(table.table, 200);
    assert_eq!(
        table.routes,
        vec![
            net("10.100.0.0/24"),
            net("fd7a:1::/64"),
            net("198.18.20.0/24")
        ]
    );
}

#[test]
fn only_allowed_table_prefixes_are_advertised() {
    let found = [
        net("198.18.30.0/24"),
        net("203.0.113.0/24"),
        net("0.0.0.0/0"),
    ];
    let allow = [net("198.18.0.0/15"), net("0.0.0.0/0")];
    assert_eq!(
        allowed_from_table(&found, &allow[..1]),
        vec![net("198.18.30.0/24")]
    );
    assert!(!allowed_from_table(&found, &allow).contains(&net("0.0.0.0/0")));
}

#[test]
fn a_router_lets_each_peer_reach_only_what_the_server_says_it_may() {
    let mut config = ClientConfig::generate("wg0".parse().unwrap());
    config.subnet_routes.advertise = vec![net("198.18.10.0/24"), net("fd00:10::/64")];
    let mut all = peer("all", 3, &[]);
    all.reach = None;
    let mut lan = peer("lan", 4, &[]);
    lan.reach = Some(vec![net("198.18.0.0/16")]);
    let mut host = peer("host", 5, &[]);
    host.reach = Some(vec![net("198.18.10.10/32"), net("198.18.99.0/24")]);
    let mut nothing = peer("nothing", 6, &[]);
    nothing.reach = Some(Vec::new());
    let mut elsewhere = peer("elsewhere", 7, &[]);
    elsewhere.reach = Some(vec![net("198.18.99.0/24")]);
    let peers = vec![all, lan, host, nothing, elsewhere];
    let state = router_state(&config, &peers, mesh()).unwrap();
    let shown: Vec<(Vec<String>, Vec<String>)> = state
        .access
        .iter()
        .map(|a| {
            (
                a.sources.iter().map(|n| n.to_string()).collect(),
                a.prefixes.iter().map(|n| n.to_string()).collect(),
            )
        })
        .collect();
    let s = |l: &[&str]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        shown,
        vec![
            (
                s(&["10.100.0.4/32", "fd7a:1::4/128"]),
                s(&["198.18.10.0/24"])
            ),
            (
                s(&["10.100.0.3/32", "fd7a:1::3/128"]),
                s(&["198.18.10.0/24", "fd00:10::/64"])
            ),
            (
                s(&["10.100.0.5/32", "fd7a:1::5/128"]),
                s(&["198.18.10.10/32"])
            ),
        ]
    );
}

#[test]
fn a_device_behind_a_gateway_reaches_only_its_granted_part() {
    // The router's list: the gateway, and the phone behind it (`via`), whose address the
    // router has in the gateway's AllowedIPs; the server says what the phone may reach.
    // The gateway itself is granted nothing: the phone's access is its own.
    let mut gw = peer("gw", 2, &[]);
    gw.reach = Some(Vec::new());
    let mut phone = peer("phone", 9, &[]);
    phone.via = Some(gw.id.clone());
    phone.reach = Some(vec![net("198.18.5.10/32")]);
    let mut other = peer("other", 4, &[]);
    other.reach = Some(Vec::new());
    let got = access(&[net("198.18.5.0/24")], &[gw, phone, other], mesh());
    assert_eq!(
        got,
        vec![Access {
            sources: vec![net("10.100.0.9/32"), net("fd7a:1::9/128")],
            prefixes: vec![net("198.18.5.10/32")],
        }]
    );
}
