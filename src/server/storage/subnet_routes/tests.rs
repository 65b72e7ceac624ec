use super::*;
use crate::keys::PrivateKey;
use crate::server::registry::Registration;
use crate::server::store::{Snapshot, FORMAT_VERSION};
use crate::time;

fn registry() -> Registry {
    let mut r = Registry::from_snapshot(Snapshot {
        version: FORMAT_VERSION,
        network_cidr: "10.100.0.0/24".parse().unwrap(),
        peers: Vec::new(),
    })
    .unwrap();
    r.set_mesh6("fd7a:1:2:3::/64".parse().unwrap());
    r
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Registers `host` advertising `routes` with `tags`, the policy applied as a store does.
fn join(
    r: &mut Registry,
    policy: &Policy,
    host: &str,
    tags: &[&str],
    routes: &[&str],
) -> PeerRecord {
    let reg = Registration {
        public_key: PrivateKey::generate().public_key(),
        hostname: host.parse().unwrap(),
        os: "linux".parse().unwrap(),
        endpoint: None,
        listen_port: Some(51820),
        exit_node: false,
        allowed_ips: routes.iter().map(|s| net(s)).collect(),
        observed_ip: "198.18.0.9".parse().unwrap(),
        tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
        owner: None,
        gateway_port: None,
    };
    let now = time::from_unix_secs(1_700_000_000);
    let prepared = r.prepare(&reg, now).unwrap();
    let Prepared::Write { record, .. } = settle(prepared, policy, r) else {
        panic!("a new key is a write")
    };
    r.commit(record.clone());
    record
}

fn approve(r: &mut Registry, who: &PeerRecord, prefix: &str) -> Result<PeerRecord, Refused> {
    let owner = r.by_id(&who.id).unwrap().clone();
    let record = decide(r, &owner, net(prefix), Verdict::Approve)?;
    r.commit(record.clone());
    Ok(record)
}

fn refused(e: Refused) -> (u16, String) {
    (e.status, e.why)
}

#[test]
fn an_advertised_route_is_private_until_approved_then_listed() {
    let mut r = registry();
    let router = join(
        &mut r,
        &Policy::allow_all(),
        "gw",
        &[],
        &["192.168.10.0/24"],
    );
    assert!(router.approved_routes.is_empty());
    let info = r.info(&router.id).unwrap();
    assert!(!info.allowed_ips.contains(&net("192.168.10.0/24")));
    approve(&mut r, &router, "192.168.10.0/24").unwrap();
    let info = r.info(&router.id).unwrap();
    assert!(info.allowed_ips.contains(&net("192.168.10.0/24")));
    // Rejecting takes it back out of the list.
    let owner = r.by_id(&router.id).unwrap().clone();
    let record = decide(&r, &owner, net("192.168.10.0/24"), Verdict::Reject).unwrap();
    assert!(record.approved_routes.is_empty());
}

#[test]
fn default_mesh_and_unadvertised_routes_are_refused_with_the_reason() {
    let mut r = registry();
    let router = join(
        &mut r,
        &Policy::allow_all(),
        "gw",
        &[],
        &["10.100.0.128/25", "fd7a:1:2:3::/80", "192.168.10.0/24"],
    );
    let (status, why) = refused(approve(&mut r, &router, "10.100.0.128/25").unwrap_err());
    assert_eq!(status, 409);
    assert!(
        why.contains("overlaps the mesh network 10.100.0.0/24"),
        "{why}"
    );
    let (status, why) = refused(approve(&mut r, &router, "fd7a:1:2:3::/80").unwrap_err());
    assert_eq!(status, 409, "{why}");
    let (status, why) = refused(approve(&mut r, &router, "172.16.0.0/12").unwrap_err());
    assert_eq!(status, 404);
    assert!(
        why.contains("does not advertise 172.16.0.0/12; it advertises"),
        "{why}"
    );
    let (status, why) = refused(approve(&mut r, &router, "0.0.0.0/0").unwrap_err());
    assert_eq!(status, 404, "{why}");
    // The refusal function names the exit-node way for a default route.
    let why = refusal(&router, &net("0.0.0.0/0"), Mesh::of(&r), r.iter()).unwrap();
    assert!(why.contains("--exit-node"), "{why}");
}

#[test]
fn an_overlap_of_another_length_is_refused_but_the_same_prefix_is_failover() {
    let mut r = registry();
    let a = join(&mut r, &Policy::allow_all(), "a", &[], &["192.168.10.0/24"]);
    let b = join(
        &mut r,
        &Policy::allow_all(),
        "b",
        &[],
        &["192.168.10.0/24", "192.168.0.0/16"],
    );
    approve(&mut r, &a, "192.168.10.0/24").unwrap();
    approve(&mut r, &b, "192.168.10.0/24").unwrap();
    let (status, why) = refused(approve(&mut r, &b, "192.168.0.0/16").unwrap_err());
    assert_eq!(status, 409);
    assert!(
        why.contains("192.168.0.0/16 overlaps 192.168.10.0/24, approved for a (10.100.0.1)"),
        "{why}"
    );
}

#[test]
fn the_policy_approves_new_routes_of_its_advertisers_only() {
    let policy = Policy::from_json(
        r#"{"allow": [{"from": ["*"], "to": ["*"]}],
            "routes": [{"advertisers": ["tag:office"], "prefixes": ["192.168.0.0/16"]}]}"#,
    )
    .unwrap();
    let mut r = registry();
    let office = join(
        &mut r,
        &policy,
        "gw",
        &["tag:office"],
        &["192.168.10.0/24", "10.9.0.0/16"],
    );
    assert_eq!(office.approved_routes, vec![net("192.168.10.0/24")]);
    let other = join(&mut r, &policy, "lab", &["tag:lab"], &["192.168.20.0/24"]);
    assert!(other.approved_routes.is_empty());
    // An operator's rejection sticks while the route stays advertised: registering again
    // with the same routes does not approve it again.
    let owner = r.by_id(&office.id).unwrap().clone();
    let rejected = decide(&r, &owner, net("192.168.10.0/24"), Verdict::Reject).unwrap();
    r.commit(rejected);
    let again = Registration {
        public_key: office.public_key,
        hostname: office.hostname.clone(),
        os: office.os.clone(),
        endpoint: None,
        listen_port: Some(51820),
        exit_node: false,
        allowed_ips: office.allowed_ips.clone(),
        observed_ip: "198.18.0.9".parse().unwrap(),
        tags: Vec::new(),
        owner: None,
        gateway_port: None,
    };
    let prepared = r
        .prepare(&again, time::from_unix_secs(1_700_000_100))
        .unwrap();
    let record = match settle(prepared, &policy, &r) {
        Prepared::Unchanged(record) | Prepared::Write { record, .. } => record,
    };
    assert!(record.approved_routes.is_empty());
}

#[test]
fn a_policy_rule_without_prefixes_is_refused() {
    let e =
        Policy::from_json(r#"{"allow": [], "routes": [{"advertisers": ["*"], "prefixes": []}]}"#)
            .unwrap_err();
    assert!(e.0.contains("routes[0].prefixes is empty"), "{e}");
}

#[test]
fn dropping_a_route_drops_its_approval() {
    let mut r = registry();
    let router = join(
        &mut r,
        &Policy::allow_all(),
        "gw",
        &[],
        &["192.168.10.0/24"],
    );
    approve(&mut r, &router, "192.168.10.0/24").unwrap();
    let reg = Registration {
        public_key: router.public_key,
        hostname: router.hostname.clone(),
        os: router.os.clone(),
        endpoint: None,
        listen_port: Some(51820),
        exit_node: false,
        allowed_ips: Vec::new(),
        observed_ip: "198.18.0.9".parse().unwrap(),
        tags: Vec::new(),
        owner: None,
        gateway_port: None,
    };
    match r
        .prepare(&reg, time::from_unix_secs(1_700_000_100))
        .unwrap()
    {
        Prepared::Write { record, .. } => assert!(record.approved_routes.is_empty()),
        Prepared::Unchanged(_) => panic!("the routes changed"),
    }
}

#[test]
fn a_reload_approves_routes_already_advertised_that_its_rules_now_cover() {
    let mut r = registry();
    let none = Policy::allow_all();
    let office = join(
        &mut r,
        &none,
        "gw",
        &["tag:office"],
        &["192.168.10.0/24", "10.9.0.0/16"],
    );
    let wide = join(&mut r, &none, "wide", &["tag:office"], &["192.168.0.0/16"]);
    let lab = join(&mut r, &none, "lab", &["tag:lab"], &["192.168.30.0/24"]);
    assert!(office.approved_routes.is_empty() && lab.approved_routes.is_empty());
    let policy = Policy::from_json(
        r#"{"allow": [{"from": ["*"], "to": ["*"]}],
            "routes": [{"advertisers": ["tag:office"], "prefixes": ["192.168.0.0/16"]}]}"#,
    )
    .unwrap();
    let changed = reload_approvals(&policy, &r);
    // gw (first by address) gets its covered route; wide's /16 overlaps it with another
    // length, so it is not approved; lab is not an advertiser the rule names.
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].id, office.id);
    assert_eq!(changed[0].approved_routes, vec![net("192.168.10.0/24")]);
    for record in changed {
        r.commit(record);
    }
    assert!(r.by_id(&wide.id).unwrap().approved_routes.is_empty());
    // Nothing left to do: a second reload of the same rules changes nothing.
    assert!(reload_approvals(&policy, &r).is_empty());
    // A reload whose rules no longer cover the route leaves the approval as it was.
    let narrower = Policy::from_json(r#"{"allow": [], "routes": [{"advertisers": ["tag:lab"], "prefixes": ["192.168.30.0/24"]}]}"#).unwrap();
    let changed = reload_approvals(&narrower, &r);
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].id, lab.id);
    assert_eq!(
        r.by_id(&office.id).unwrap().approved_routes,
        vec![net("192.168.10.0/24")]
    );
    // Without route rules, nothing is looked at.
    assert!(reload_approvals(&Policy::allow_all(), &r).is_empty());
}
