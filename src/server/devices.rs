//! Devices without the agent (phones, routers, NAS boxes running a stock WireGuard app):
//! each is a registry record with `via` set to the gateway peer it reaches the mesh
//! through. It takes a mesh address from the same pool and a `NAME.mesh` name, is listed in
//! `/peers` (with `via`) to everyone the policy lets see it by its tags, and never
//! heartbeats. Pure decisions over the registry; the stores write what this decides.

use crate::keys::PublicKey;
use crate::proto::devices::DeviceRoute;
use crate::proto::subnet_routes::{primary, Grants};
use crate::server::policy::Policy;
use crate::server::registry::Registry;
use crate::server::store::PeerRecord;
use crate::types::{DnsName, Hostname, PeerId, Tag};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

/// The OS name devices are listed with.
pub const DEVICE_OS: &str = "device";

/// A device an operator asked to add, already validated.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// Its name: `NAME.mesh`, and how `device show|remove` find it.
    pub name: DnsName,
    /// Its WireGuard public key (its own, or one the server generated).
    pub public_key: PublicKey,
    /// The gateway's `.mesh` name, hostname or peer id.
    pub via: String,
    /// Tags for the access policy.
    pub tags: Vec<Tag>,
}

/// Why a device cannot be added (or a key cannot register as a node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// No peer is called that.
    UnknownGateway(String),
    /// That peer does not run `up --gateway`.
    NotAGateway(String),
    /// The gateway named is itself a device.
    GatewayIsDevice(String),
    /// The name is held by another peer or device.
    NameTaken(String),
    /// The key is registered already.
    KeyTaken(PublicKey),
    /// A node tried to register with a device's key.
    KeyIsDevice(PublicKey),
    /// The name is no valid hostname.
    BadName(String),
    /// The address pool said no.
    Pool(crate::server::ipam::IpamError),
}

impl DeviceError {
    /// The HTTP status it is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            DeviceError::UnknownGateway(_) => 404,
            DeviceError::NotAGateway(_) | DeviceError::GatewayIsDevice(_) => 400,
            DeviceError::NameTaken(_) | DeviceError::KeyTaken(_) | DeviceError::KeyIsDevice(_) => {
                409
            }
            DeviceError::BadName(_) => 400,
            DeviceError::Pool(crate::server::ipam::IpamError::Exhausted(_)) => 503,
            DeviceError::Pool(_) => 500,
        }
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::UnknownGateway(g) => write!(
                f,
                "no peer is called {g}: name the gateway by its .mesh name, hostname or peer id (see `wgmesh peers list`)"
            ),
            DeviceError::NotAGateway(g) => write!(
                f,
                "peer {g} is not a gateway: run `wgmesh up --gateway` on it first"
            ),
            DeviceError::GatewayIsDevice(g) => {
                write!(f, "{g} is a device itself; name a node running `up --gateway`")
            }
            DeviceError::NameTaken(n) => write!(
                f,
                "the name {n} is taken by another peer or device: choose another name"
            ),
            DeviceError::KeyTaken(k) => write!(
                f,
                "public key {k} is registered already: a device needs a key of its own"
            ),
            DeviceError::KeyIsDevice(k) => write!(
                f,
                "public key {k} belongs to a device behind a gateway: devices do not run the agent; remove the device first (`wgmesh device remove NAME`)"
            ),
            DeviceError::BadName(why) => write!(f, "device name: {why}"),
            DeviceError::Pool(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DeviceError {}

/// Refuses a node registration with a device's key, which would turn the device into a node.
pub fn refuse_device_key(registry: &Registry, key: &PublicKey) -> Result<(), DeviceError> {
    let id = PeerId::for_key(key);
    match registry.by_id(&id) {
        Some(r) if r.via.is_some() => Err(DeviceError::KeyIsDevice(*key)),
        _ => Ok(()),
    }
}

/// The peer a name stands for: its `.mesh` name, hostname or id (first match in address
/// order, names first).
pub fn find_peer(registry: &Registry, name: &str) -> Option<PeerRecord> {
    let records = registry.records();
    let by_name = records
        .iter()
        .find(|r| r.dns_name.as_ref().is_some_and(|n| n.as_str() == name));
    by_name
        .or_else(|| {
            records
                .iter()
                .find(|r| r.hostname.as_str() == name || r.id.as_str() == name)
        })
        .cloned()
}

/// The device called `name` (by its `.mesh` name).
pub fn find_device(registry: &Registry, name: &str) -> Option<PeerRecord> {
    registry
        .records()
        .into_iter()
        .find(|r| r.via.is_some() && r.dns_name.as_ref().is_some_and(|n| n.as_str() == name))
}

/// Every device, in address order.
pub fn list(registry: &Registry) -> Vec<PeerRecord> {
    registry
        .records()
        .into_iter()
        .filter(|r| r.via.is_some())
        .collect()
}

/// Decides a new device's record: checks the gateway, the key and the name, and takes an
/// address and the name. The record must be stored, then committed to the registry; if
/// storing fails, give the address back with [`Registry::release`].
pub fn prepare(
    registry: &mut Registry,
    device: &NewDevice,
    now: SystemTime,
) -> Result<PeerRecord, DeviceError> {
    let gateway = find_peer(registry, &device.via)
        .ok_or_else(|| DeviceError::UnknownGateway(device.via.clone()))?;
    if gateway.via.is_some() {
        return Err(DeviceError::GatewayIsDevice(device.via.clone()));
    }
    if gateway.gateway_port.is_none() {
        return Err(DeviceError::NotAGateway(device.via.clone()));
    }
    if registry.knows(&device.public_key) {
        return Err(DeviceError::KeyTaken(device.public_key));
    }
    let hostname: Hostname = device
        .name
        .as_str()
        .parse()
        .map_err(|e: crate::types::InvalidValue| DeviceError::BadName(e.to_string()))?;
    let id = PeerId::for_key(&device.public_key);
    let (ip, name) = registry
        .allocate(&device.public_key, &id, &hostname)
        .map_err(DeviceError::Pool)?;
    if name != device.name {
        registry.release(ip);
        return Err(DeviceError::NameTaken(device.name.to_string()));
    }
    Ok(PeerRecord {
        id,
        public_key: device.public_key,
        virtual_ip: ip,
        endpoint: None,
        observed_ip: None,
        listen_port: None,
        hostname,
        os: DEVICE_OS.parse().expect("a valid OS name"),
        allowed_ips: Vec::new(),
        exit_node: false,
        registered_at: now,
        last_heartbeat: now,
        online: true,
        tags: device.tags.clone(),
        dns_name: Some(name),
        via: Some(gateway.id),
        gateway_port: None,
        approved_routes: Vec::new(),
        owner: None,
    })
}

/// A peer's mesh addresses: its /32, and its /128 when the mesh has an IPv6 prefix.
pub fn addresses(record: &PeerRecord, mesh6: Option<ipnet::Ipv6Net>) -> Vec<IpNet> {
    let mut out = vec![IpNet::from(IpAddr::V4(record.virtual_ip))];
    if let Some(prefix) = mesh6 {
        let v6 = crate::proto::mesh6::address(prefix, record.virtual_ip);
        out.push(IpNet::from(IpAddr::V6(v6)));
    }
    out
}

/// What a device may reach in the mesh: the mesh addresses of every online peer and device
/// the policy lets it see (its gateway enforces this for the device's traffic, which the
/// device's own WireGuard app does not).
pub fn reach(registry: &Registry, policy: &Policy, device: &PeerRecord) -> Vec<IpNet> {
    let mine = policy.membership_routed(&device.tags, &device.approved_routes);
    let mesh6 = registry.mesh6();
    registry
        .records()
        .iter()
        .filter(|r| r.online && r.id != device.id)
        .filter(|r| {
            policy
                .membership_routed(&r.tags, &r.approved_routes)
                .sees(&mine)
        })
        .flat_map(|r| addresses(r, mesh6))
        .collect()
}

/// The parts of approved subnet routes a device may reach, each through the route's router
/// in use: the policy's grants for the device's tags ([`Policy::grants`], as for a node),
/// cut to each approved route of an online router its gateway sees (the gateway forwards
/// there over its own tunnel to the router; the router, seeing the gateway, routes the
/// device's address back) or of the gateway itself, the router chosen among those by the rule every node uses
/// ([`crate::proto::subnet_routes::primary`]). Sorted by prefix.
pub fn routes(registry: &Registry, policy: &Policy, device: &PeerRecord) -> Vec<DeviceRoute> {
    let grants = policy.grants(&policy.membership(&device.tags));
    if grants == Grants::Only(Vec::new()) {
        return Vec::new();
    }
    let Some(gateway) = device.via.as_ref().and_then(|id| registry.by_id(id)) else {
        return Vec::new();
    };
    let seen_by_gateway = policy.membership_routed(&gateway.tags, &gateway.approved_routes);
    let mut routers: BTreeMap<IpNet, Vec<&PeerRecord>> = BTreeMap::new();
    let records = registry.records();
    for r in records.iter().filter(|r| r.online && r.via.is_none()) {
        if r.approved_routes.is_empty() {
            continue;
        }
        let m = policy.membership_routed(&r.tags, &r.approved_routes);
        if r.id != gateway.id && !m.sees(&seen_by_gateway) {
            continue;
        }
        for net in &r.approved_routes {
            routers.entry(net.trunc()).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (route, list) in routers {
        let chosen = primary(list.iter().map(|r| r.virtual_ip)).expect("at least one router");
        let router = list
            .iter()
            .find(|r| r.virtual_ip == chosen)
            .expect("the primary is one of them");
        out.extend(grants.within(&route).into_iter().map(|prefix| DeviceRoute {
            prefix,
            router: router.id.clone(),
        }));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::server::registry::{Prepared, Registration};
    use crate::server::store::{Snapshot, FORMAT_VERSION};

    fn registry() -> Registry {
        Registry::from_snapshot(Snapshot {
            version: FORMAT_VERSION,
            network_cidr: "10.100.0.0/24".parse().unwrap(),
            peers: Vec::new(),
        })
        .unwrap()
    }

    fn node(registry: &mut Registry, name: &str, gateway_port: Option<u16>) -> PeerRecord {
        let reg = Registration {
            public_key: PrivateKey::generate().public_key(),
            hostname: name.parse().unwrap(),
            os: "linux".parse().unwrap(),
            endpoint: None,
            listen_port: Some(51820),
            exit_node: false,
            allowed_ips: Vec::new(),
            observed_ip: "198.18.0.9".parse().unwrap(),
            tags: Vec::new(),
            gateway_port,
            owner: None,
        };
        let Prepared::Write { record, .. } = registry.prepare(&reg, SystemTime::now()).unwrap()
        else {
            panic!("a new key is a write")
        };
        registry.commit(record.clone());
        record
    }

    fn phone(name: &str, via: &str) -> NewDevice {
        NewDevice {
            name: name.parse().unwrap(),
            public_key: PrivateKey::generate().public_key(),
            via: via.into(),
            tags: vec!["tag:phone".parse().unwrap()],
        }
    }

    #[test]
    fn a_device_gets_an_address_its_name_and_its_gateway() {
        let mut r = registry();
        let gw = node(&mut r, "gw", Some(51821));
        let device = prepare(&mut r, &phone("phone", "gw"), SystemTime::now()).unwrap();
        assert_eq!(device.via, Some(gw.id.clone()));
        assert_ne!(device.virtual_ip, gw.virtual_ip);
        assert_eq!(device.dns_name.as_ref().unwrap().as_str(), "phone");
        r.commit(device.clone());
        assert_eq!(find_device(&r, "phone"), Some(device.clone()));
        assert_eq!(list(&r), vec![device.clone()]);
        assert_eq!(r.info(&device.id).unwrap().via, Some(gw.id));
        // It never times out: it does not heartbeat.
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        let gone = r.sweep(later, std::time::Duration::from_secs(60));
        assert!(gone.iter().all(|(id, _, _)| *id != device.id));
        assert!(r.by_id(&device.id).unwrap().online);
        // Its key cannot register as a node.
        let e = refuse_device_key(&r, &device.public_key).unwrap_err();
        assert_eq!(e.http_status(), 409);
    }

    #[test]
    fn devices_are_refused_with_a_reason() {
        let mut r = registry();
        node(&mut r, "plain", None);
        node(&mut r, "gw", Some(51821));
        let now = SystemTime::now();
        let err = |d: NewDevice, r: &mut Registry| prepare(r, &d, now).unwrap_err().to_string();
        assert!(err(phone("p", "nobody"), &mut r).contains("no peer is called nobody"));
        assert!(err(phone("p", "plain"), &mut r).contains("up --gateway"));
        assert!(err(phone("gw", "gw"), &mut r).contains("taken"));
        let mut taken = phone("p", "gw");
        taken.public_key = r.records()[0].public_key;
        assert!(err(taken, &mut r).contains("registered already"));
        // A refused name gives its address back.
        let free_before = r.records().len();
        let d = prepare(&mut r, &phone("p", "gw"), now).unwrap();
        assert_eq!(d.virtual_ip.octets()[3] as usize, free_before + 1);
    }

    fn router(r: &mut Registry, name: &str, tags: &[&str], routes: &[&str]) -> PeerRecord {
        let mut rec = node(r, name, None);
        rec.tags = tags.iter().map(|t| t.parse().unwrap()).collect();
        rec.allowed_ips = routes.iter().map(|n| n.parse().unwrap()).collect();
        rec.approved_routes = rec.allowed_ips.clone();
        r.commit(rec.clone());
        rec
    }

    #[test]
    fn a_device_gets_its_granted_parts_of_routes_through_their_primary_router() {
        let policy = Policy::from_json(
            r#"{"allow": [
                {"from": ["tag:phone"], "to": ["198.18.5.10", "198.18.9.0/24"]},
                {"from": ["tag:gw"], "to": ["tag:router"]}
            ]}"#,
        )
        .unwrap();
        let mut r = registry();
        let mut gw = node(&mut r, "gw", Some(51821));
        gw.tags = vec!["tag:gw".parse().unwrap()];
        r.commit(gw.clone());
        let r1 = router(&mut r, "r1", &["tag:router"], &["198.18.5.0/24"]);
        let r2 = router(&mut r, "r2", &["tag:router"], &["198.18.5.0/24"]);
        // A router the gateway does not see: its route cannot be reached through it.
        router(&mut r, "hidden", &["tag:other"], &["198.18.9.0/24"]);
        let mut device = prepare(&mut r, &phone("phone", "gw"), SystemTime::now()).unwrap();
        r.commit(device.clone());
        let expected = |router: &PeerRecord| {
            vec![DeviceRoute {
                prefix: "198.18.5.10/32".parse().unwrap(),
                router: router.id.clone(),
            }]
        };
        assert_eq!(routes(&r, &policy, &device), expected(&r1));
        // The primary stops: the next router carries it.
        r.offline(&r1.id);
        assert_eq!(routes(&r, &policy, &device), expected(&r2));
        // Without a grant, nothing; with "*", every route the gateway can reach, whole.
        device.tags = vec!["tag:none".parse().unwrap()];
        assert!(routes(&r, &policy, &device).is_empty());
        let all = Policy::allow_all();
        let whole: Vec<String> = routes(&r, &all, &device)
            .iter()
            .map(|d| d.prefix.to_string())
            .collect();
        assert_eq!(whole, vec!["198.18.5.0/24", "198.18.9.0/24"]);
    }

    #[test]
    fn a_subnet_router_is_told_what_a_device_may_reach() {
        let policy = Policy::from_json(
            r#"{"allow": [
                {"from": ["tag:phone"], "to": ["198.18.5.10"]},
                {"from": ["tag:gw"], "to": ["tag:router"]}
            ]}"#,
        )
        .unwrap();
        let mut r = registry();
        node(&mut r, "gw", Some(51821));
        let r1 = router(&mut r, "r1", &["tag:router"], &["198.18.5.0/24"]);
        let device = prepare(&mut r, &phone("phone", "gw"), SystemTime::now()).unwrap();
        r.commit(device.clone());
        let mut viewer =
            crate::server::route_access::Viewer::new(&policy, &crate::server::registry::party(&r1));
        let (party, entry) = r
            .online_tagged()
            .into_iter()
            .find(|(_, e)| e.id == device.id)
            .unwrap();
        assert!(viewer.sees(&party), "the grant implies the tunnel");
        let shaped = viewer.shape(&party, entry);
        assert_eq!(shaped.via, device.via);
        assert_eq!(shaped.reach, Some(vec!["198.18.5.10/32".parse().unwrap()]));
    }
}
