//! Devices on the API: the operator's `/admin/devices` (add, list, show, remove; admin
//! secret, audited) and the gateway's signed `GET /devices?peer_id=ID` (the devices behind
//! it, with what each may reach). A generated private key goes into the one answer that
//! adds the device and nowhere else: not the store, not the audit log, not the logs.

use super::error::{ok_json, parse_body, unknown_peer, Refusal};
use super::{Api, Authed};
use crate::keys::PrivateKey;
use crate::proto::devices::{
    DeviceAddRequest, DeviceAnswer, DeviceConfig, DeviceListResponse, DeviceView, GatewayDevice,
    GatewayDevicesResponse,
};
use crate::proto::model::SuccessResponse;
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::devices::{self, NewDevice};
use crate::server::http::{Request, Response};
use crate::server::policy::Policy;
use crate::server::registry::Registry;
use crate::server::store::PeerRecord;
use crate::types::{DnsName, PeerId};
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::SystemTime;

/// Keepalive the device sends: under the 30 s or so NATs keep an idle UDP mapping.
const DEVICE_KEEPALIVE: u16 = 25;

fn view(registry: &Registry, d: &PeerRecord) -> DeviceView {
    let via = d.via.clone().unwrap_or_else(|| d.id.clone());
    let via_name = registry
        .by_id(&via)
        .and_then(|g| g.dns_name.as_ref().map(|n| n.to_string()))
        .unwrap_or_else(|| via.to_string());
    DeviceView {
        name: d
            .dns_name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_default(),
        id: d.id.clone(),
        public_key: d.public_key,
        addresses: devices::addresses(d, registry.mesh6()),
        via,
        via_name,
        tags: d.tags.clone(),
        created_at: crate::time::format_exact(d.registered_at),
    }
}

/// `--exit` needs a gateway that is an exit node.
fn check_exit(gateway: &PeerRecord) -> Result<(), Refusal> {
    match gateway.exit_node {
        true => Ok(()),
        false => Err(Refusal(
            400,
            format!(
                "field `exit`: gateway {} is not an exit node; start it with `wgmesh up --gateway --exit-node`, or leave out --exit",
                gateway.hostname
            ),
        )),
    }
}

/// The parts of the device's configuration, from its gateway as the registry has it now:
/// AllowedIPs are the mesh's networks, the parts of subnet routes the policy grants the
/// device (so its app sends them into the tunnel), and the default routes with `exit`.
fn config_of(
    registry: &Registry,
    policy: &Policy,
    d: &PeerRecord,
    exit: bool,
) -> Result<DeviceConfig, Refusal> {
    let gateway = d
        .via
        .as_ref()
        .and_then(|id| registry.by_id(id))
        .ok_or_else(|| Refusal(409, "the device's gateway is no longer registered".into()))?;
    if exit {
        check_exit(gateway)?;
    }
    let mesh6 = registry.mesh6();
    let gateway_addrs = devices::addresses(gateway, mesh6);
    let mut allowed_ips = vec![IpNet::V4(registry.network())];
    allowed_ips.extend(mesh6.map(IpNet::V6));
    for route in devices::routes(registry, policy, d) {
        if !allowed_ips.contains(&route.prefix) {
            allowed_ips.push(route.prefix);
        }
    }
    if exit {
        allowed_ips.push("0.0.0.0/0".parse().expect("literal"));
        allowed_ips.push("::/0".parse().expect("literal"));
    }
    let endpoint = gateway
        .published_endpoint()
        .zip(gateway.gateway_port)
        .map(|(e, port)| std::net::SocketAddr::new(e.0.ip(), port).to_string());
    Ok(DeviceConfig {
        addresses: devices::addresses(d, mesh6),
        dns: gateway_addrs
            .iter()
            .map(IpNet::addr)
            .collect::<Vec<IpAddr>>(),
        gateway_public_key: gateway.public_key,
        endpoint,
        allowed_ips,
        persistent_keepalive: DEVICE_KEEPALIVE,
    })
}

impl Api {
    /// Routes `/admin/devices[/NAME]` (the admin secret was checked).
    pub(super) fn admin_devices(
        &self,
        req: &Request,
        method: &str,
        name: Option<&str>,
    ) -> Result<Response, Refusal> {
        match (method, name) {
            ("GET", None) => {
                let registry = self.state.registry();
                let list = devices::list(&registry);
                Ok(ok_json(&DeviceListResponse {
                    success: true,
                    devices: list.iter().map(|d| view(&registry, d)).collect(),
                }))
            }
            ("POST", None) => self.add_device(req),
            ("GET", Some(name)) => {
                let exit = req.query_param("exit").is_some_and(|v| v == "true");
                let registry = self.state.registry();
                let (policy, _) = self.state.policy.current();
                let device =
                    devices::find_device(&registry, name).ok_or_else(|| no_device(name))?;
                Ok(ok_json(&DeviceAnswer {
                    success: true,
                    config: config_of(&registry, &policy, &device, exit)?,
                    device: view(&registry, &device),
                    private_key: None,
                }))
            }
            ("DELETE", Some(name)) => self.remove_device(req, name),
            (_, None) => Err(super::error::method_not_allowed(
                format!("{method} is not allowed on /admin/devices: use GET or POST"),
                "GET, POST",
            )),
            (_, Some(_)) => Err(super::error::method_not_allowed(
                format!("{method} is not allowed on a device: use GET or DELETE"),
                "GET, DELETE",
            )),
        }
    }

    fn add_device(&self, req: &Request) -> Result<Response, Refusal> {
        let body: DeviceAddRequest = parse_body(req)?;
        let answer = self.create_device(req.remote, super::admin::ADMIN_ACTOR, body)?;
        Ok(ok_json(&answer))
    }

    /// Adds a device (for `/admin/devices` and the console), audited as `actor`'s; the
    /// answer carries a generated private key, which nothing else ever sees.
    pub(super) fn create_device(
        &self,
        source: std::net::SocketAddr,
        actor: &str,
        body: DeviceAddRequest,
    ) -> Result<DeviceAnswer, Refusal> {
        let name: DnsName = body.name.trim().parse().map_err(|e| {
            Refusal(
                400,
                format!("field `name`: {e} (one DNS label: a-z, 0-9 and -)"),
            )
        })?;
        let generated = body.public_key.is_none().then(PrivateKey::generate);
        let public_key = match (&generated, body.public_key) {
            (Some(private), _) => private.public_key(),
            (None, Some(key)) => key,
            (None, None) => unreachable!("a key is generated when none is given"),
        };
        let device = NewDevice {
            name,
            public_key,
            via: body.via.trim().to_owned(),
            tags: body.tags,
        };
        // The exit check needs the gateway: refuse before anything is stored.
        if body.exit {
            if let Some(gateway) = devices::find_peer(&self.state.registry(), &device.via) {
                check_exit(&gateway)?;
            }
        }
        let now = SystemTime::now();
        let record = self.storage.add_device(&device, now)?;
        let registry = self.state.registry();
        let (policy, _) = self.state.policy.current();
        let answer = DeviceAnswer {
            success: true,
            config: config_of(&registry, &policy, &record, body.exit)?,
            device: view(&registry, &record),
            private_key: generated.map(|k| k.to_base64()),
        };
        drop(registry);
        self.trust.audit(
            AuditEvent::new(AuditKind::DeviceAdd, now)
                .source(source)
                .actor(actor)
                .peer_id(record.id.clone())
                .peer_key(record.public_key)
                .detail(format!(
                    "device {} ({}) via {}, key {}, tags {}",
                    answer.device.name,
                    record.virtual_ip,
                    answer.device.via_name,
                    if answer.private_key.is_some() {
                        "generated by the server (not stored)"
                    } else {
                        "the device's own"
                    },
                    crate::server::policy::describe_tags(&record.tags)
                )),
        );
        log::info!(
            "added device {} ({}) via {} ({actor})",
            answer.device.name,
            record.virtual_ip,
            answer.device.via_name
        );
        Ok(answer)
    }

    fn remove_device(&self, req: &Request, name: &str) -> Result<Response, Refusal> {
        self.delete_device(req.remote, super::admin::ADMIN_ACTOR, name)?;
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    /// Removes a device (for `/admin/devices/NAME` and the console), audited as `actor`'s.
    pub(super) fn delete_device(
        &self,
        source: std::net::SocketAddr,
        actor: &str,
        name: &str,
    ) -> Result<PeerRecord, Refusal> {
        let record = self
            .storage
            .remove_device(name)?
            .ok_or_else(|| no_device(name))?;
        self.trust.audit(
            AuditEvent::new(AuditKind::DeviceRemove, SystemTime::now())
                .source(source)
                .actor(actor)
                .peer_id(record.id.clone())
                .peer_key(record.public_key)
                .detail(format!("device {name} ({}) removed", record.virtual_ip)),
        );
        log::info!("removed device {name} ({}) ({actor})", record.virtual_ip);
        Ok(record)
    }

    /// Every device, and the gateways' `.mesh` names (for the console's form).
    pub(super) fn device_views(&self) -> (Vec<DeviceView>, Vec<String>) {
        let registry = self.state.registry();
        let list = devices::list(&registry)
            .iter()
            .map(|d| view(&registry, d))
            .collect();
        let gateways = registry
            .records()
            .iter()
            .filter(|r| r.gateway_port.is_some() && r.via.is_none())
            .filter_map(|r| r.dns_name.as_ref().map(|n| n.to_string()))
            .collect();
        (list, gateways)
    }

    /// `GET /devices?peer_id=ID`, signed by the gateway: the devices behind it, what the
    /// policy lets each reach, and the parts of subnet routes it grants each.
    pub(super) fn gateway_devices(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let id: PeerId = req
            .query_param("peer_id")
            .ok_or_else(|| Refusal(400, "query parameter `peer_id` is missing".into()))?
            .parse()
            .map_err(|e| Refusal(400, format!("query parameter `peer_id`: {e}")))?;
        self.check_owner(req, &key, &id)?;
        let registry = self.state.registry();
        if registry.by_id(&id).is_none() {
            return Err(unknown_peer(&id));
        }
        let (policy, _) = self.state.policy.current();
        let list = devices::list(&registry)
            .into_iter()
            .filter(|d| d.via.as_ref() == Some(&id))
            .map(|d| GatewayDevice {
                id: d.id.clone(),
                name: d
                    .dns_name
                    .as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                public_key: d.public_key,
                addresses: devices::addresses(&d, registry.mesh6()),
                reach: devices::reach(&registry, &policy, &d),
                routes: devices::routes(&registry, &policy, &d),
            })
            .collect();
        Ok(ok_json(&GatewayDevicesResponse {
            success: true,
            devices: list,
        }))
    }
}

fn no_device(name: &str) -> Refusal {
    Refusal(
        404,
        format!("no device is called {name}: see `wgmesh device list`"),
    )
}
