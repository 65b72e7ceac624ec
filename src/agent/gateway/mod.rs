//! `up --gateway` (Linux): this node carries devices without the agent (phones, routers
//! with a stock WireGuard app) into the mesh. Each device is a WireGuard peer on an
//! interface of its own ([`crate::agent::state::config::GatewaySettings`]), with the node's
//! own key, so the device's configuration names this node's public key; the mesh interface,
//! its path choice and the relay never see devices. Other nodes route each device's
//! addresses to this node (the server lists the device with `via`), and the nftables table
//! of [`plan::ruleset`] forwards a device's traffic only to what the policy lets it reach.
//!
//! Followed after every sync and live update of `up`: the server's `GET /devices` lists
//! the devices with what each may reach; peers, routes and rules follow it. A device the
//! operator removes loses its peer at the next update (a live change), so its access ends
//! at once.

pub mod plan;

use crate::agent::apply::sink::Sink;
use crate::agent::decide::device_routes;
use crate::agent::error::AgentError;
use crate::agent::run::engine::Engine;
use crate::agent::state::config::GatewaySettings;
use crate::keys::PublicKey;
use crate::os::{PeerChanges, PeerSpec};
use crate::proto::devices::{DeviceRoute, GatewayDevice};
use ipnet::IpNet;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// What this run of the gateway set up, so updates change only what differs.
#[derive(Debug)]
pub struct Gateway {
    settings: GatewaySettings,
    created: bool,
    peers: HashMap<PublicKey, PeerSpec>,
    routes: BTreeSet<IpNet>,
    /// The subnet routes in the devices' table ([`plan::route_table`]).
    table: BTreeSet<IpNet>,
    ruleset: Option<String>,
}

/// What turns the applied peers into the wanted ones.
fn changes(applied: &HashMap<PublicKey, PeerSpec>, wanted: &[PeerSpec]) -> PeerChanges {
    let keys: BTreeSet<PublicKey> = wanted.iter().map(|p| p.public_key).collect();
    PeerChanges {
        upsert: wanted
            .iter()
            .filter(|p| applied.get(&p.public_key) != Some(p))
            .cloned()
            .collect(),
        remove: applied
            .keys()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect(),
    }
}

impl Gateway {
    /// A gateway that has set up nothing yet.
    pub fn new(settings: GatewaySettings) -> Gateway {
        Gateway {
            settings,
            created: false,
            peers: HashMap::new(),
            routes: BTreeSet::new(),
            table: BTreeSet::new(),
            ruleset: None,
        }
    }

    /// Brings the devices' interface, peers, routes and rules in line with the server's
    /// list, and hands the subnet routes granted to the devices to the engine
    /// ([`Engine::device_routes`]): true when they changed, so the mesh interface's peers
    /// must be planned again. A failure leaves the interface to be rebuilt at the next call.
    pub fn refresh(
        &mut self,
        engine: &mut Engine,
        sink: &mut Sink<'_>,
    ) -> Result<bool, AgentError> {
        let Some(peer_id) = engine.config.assignment.as_ref().map(|a| a.peer_id.clone()) else {
            return Ok(false);
        };
        let result = engine
            .client
            .gateway_devices(&peer_id)
            .map_err(AgentError::from)
            .and_then(|devices| {
                self.refresh_once(engine, &devices, sink)?;
                Ok(devices)
            });
        let devices = match result {
            Ok(devices) => devices,
            Err(e) => {
                self.created = false;
                return Err(e);
            }
        };
        let mut wanted: Vec<DeviceRoute> = devices.iter().flat_map(|d| d.routes.clone()).collect();
        wanted.sort();
        wanted.dedup();
        let changed = engine.device_routes != wanted;
        engine.device_routes = wanted;
        Ok(changed)
    }

    fn refresh_once(
        &mut self,
        engine: &Engine,
        devices: &[GatewayDevice],
        sink: &mut Sink<'_>,
    ) -> Result<(), AgentError> {
        let Some(assignment) = engine.config.assignment.as_ref() else {
            return Ok(());
        };
        let iface = &self.settings.interface;
        if !self.created {
            let mesh = [
                IpNet::V4(assignment.network_cidr),
                IpNet::V6(crate::proto::mesh6::prefix(&assignment.server_public_key)),
            ];
            let mut setup = plan::create(iface, self.settings.port, &engine.config.private_key);
            setup.extend(plan::table_rules(self.settings.port, &mesh));
            sink.apply(&setup)?;
            self.peers.clear();
            self.routes.clear();
            self.table.clear();
            self.ruleset = None;
            self.created = true;
        }
        let wanted = plan::device_peers(devices);
        let change = changes(&self.peers, &wanted);
        let want_routes: BTreeSet<IpNet> = devices
            .iter()
            .flat_map(|d| d.addresses.iter().map(IpNet::trunc))
            .collect();
        sink.apply(&plan::update(iface, &change, &self.routes, &want_routes))?;
        self.peers = wanted.into_iter().map(|p| (p.public_key, p)).collect();
        self.routes = want_routes;
        let all: Vec<DeviceRoute> = devices.iter().flat_map(|d| d.routes.clone()).collect();
        let want_table = device_routes::forwarded(&all, &assignment.peer_id);
        let mesh_interface = engine.config.interface.as_str();
        if want_table != self.table {
            let port = self.settings.port;
            sink.apply(&plan::device_routes(
                mesh_interface,
                port,
                &self.table,
                &want_table,
            ))?;
            self.table = want_table;
        }
        let prefix6 = crate::proto::mesh6::prefix(&assignment.server_public_key);
        let own = [
            IpNet::from(IpAddr::V4(assignment.assigned_ip)),
            IpNet::from(IpAddr::V6(crate::proto::mesh6::address(
                prefix6,
                assignment.assigned_ip,
            ))),
        ];
        let facts = plan::GatewayFacts {
            interface: iface,
            mesh_interface,
            own: &own,
            exit_node: engine.config.exit_node,
            devices,
        };
        let ruleset = plan::ruleset(&facts);
        if self.ruleset.as_ref() != Some(&ruleset) {
            sink.apply(&plan::load(ruleset.clone()))?;
            self.ruleset = Some(ruleset);
        }
        Ok(())
    }

    /// Removes the devices' interface and table (also what a crashed run left).
    pub fn teardown(&mut self, sink: &mut Sink<'_>) -> Result<(), AgentError> {
        self.created = false;
        sink.apply(&plan::teardown(
            &self.settings.interface,
            self.settings.port,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u8, ip: &str) -> PeerSpec {
        PeerSpec {
            public_key: PublicKey::from_bytes([n; 32]),
            endpoint: None,
            allowed_ips: vec![ip.parse().unwrap()],
            persistent_keepalive: None,
        }
    }

    #[test]
    fn only_new_changed_and_gone_devices_touch_wireguard() {
        let applied: HashMap<PublicKey, PeerSpec> =
            [spec(1, "10.0.0.1/32"), spec(2, "10.0.0.2/32")]
                .into_iter()
                .map(|p| (p.public_key, p))
                .collect();
        let wanted = [spec(1, "10.0.0.1/32"), spec(3, "10.0.0.3/32")];
        let c = changes(&applied, &wanted);
        assert_eq!(c.upsert, vec![spec(3, "10.0.0.3/32")]);
        assert_eq!(c.remove, vec![PublicKey::from_bytes([2; 32])]);
        assert!(changes(&applied, &[spec(1, "10.0.0.1/32"), spec(2, "10.0.0.2/32")]).is_empty());
    }
}
