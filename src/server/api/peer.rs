//! The peer endpoints: register, heartbeat and deregister (the peer list and `/offline` are
//! in `sync`). Every one is authenticated by the key it concerns; see the module above for
//! the rules. Each change that moves the registry's version pokes the long-poll notifier.

use super::error::{ok_json, parse_body, too_many, unknown_peer, Refusal};
use super::{Api, Authed};
use crate::proto::model::{
    DeregisterRequest, HeartbeatRequest, RegisterRequest, RegisterResponse, SuccessResponse,
    MAX_ALLOWED_IPS,
};
use crate::proto::report::{AgentReport, MAX_REPORTED_PATHS};
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::console::view::StoredReport;
use crate::server::http::{Request, Response};
use crate::server::registry::Registration;
use crate::server::storage::admission::Credential;
use crate::server::storage::{Registered, StorageError};
use crate::server::store::PeerRecord;
use crate::types::{PeerId, TokenId};
use ipnet::{IpNet, Ipv4Net};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

/// Validates advertised prefixes: bounded, normalized, no default route unless an exit node,
/// and never overlapping the mesh (which would let a peer capture others' addresses).
fn check_allowed_ips(
    req: &RegisterRequest,
    mesh: Ipv4Net,
    mesh6: ipnet::Ipv6Net,
) -> Result<Vec<IpNet>, Refusal> {
    if req.allowed_ips.len() > MAX_ALLOWED_IPS {
        return Err(Refusal(
            400,
            format!(
                "field `allowed_ips`: {} prefixes given, at most {MAX_ALLOWED_IPS} are accepted",
                req.allowed_ips.len()
            ),
        ));
    }
    let mesh = IpNet::V4(mesh);
    let mut out: Vec<IpNet> = Vec::with_capacity(req.allowed_ips.len());
    for net in &req.allowed_ips {
        let net = net.trunc();
        if net.prefix_len() == 0 && !req.exit_node {
            return Err(Refusal(
                400,
                format!(
                    "field `allowed_ips`: {net} is a default route; set exit_node to offer one"
                ),
            ));
        }
        let overlaps = [mesh, IpNet::V6(mesh6)]
            .iter()
            .any(|m| net.contains(&m.network()) || m.contains(&net.network()));
        if overlaps && net.prefix_len() != 0 {
            return Err(Refusal(
                400,
                format!(
                    "field `allowed_ips`: {net} overlaps the mesh network {mesh} or {mesh6}, whose addresses the server assigns"
                ),
            ));
        }
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

impl Api {
    pub(super) fn register(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<Response, Refusal> {
        let source = req.remote.ip().to_canonical();
        self.trust
            .register_limit
            .take(source, Instant::now())
            .map_err(|wait| {
                self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                too_many("registrations", source, wait)
            })?;
        let key = self.authenticate(req, authed)?;
        let body: RegisterRequest = parse_body(req)?;
        if body.public_key != key {
            let why = format!(
                "request signed by {key} tries to register {}: only a key's owner may register it",
                body.public_key
            );
            self.auth_failed(req, Some(key), None, &why);
            return Err(Refusal(401, why));
        }
        // Every peer is reachable as NAME.mesh: a hostname that gives no DNS name is refused
        // here, before anything is stored or a token used up.
        crate::types::DnsName::from_hostname(body.hostname.as_str())
            .map_err(|e| Refusal(400, format!("hostname: {e}")))?;
        let network = self.state.registry().network();
        let mesh6 = crate::proto::mesh6::prefix(&self.server_public_key);
        let allowed_ips = check_allowed_ips(&body, network, mesh6)?;
        let registration = Registration {
            public_key: body.public_key,
            hostname: body.hostname,
            os: body.os,
            endpoint: body.endpoint,
            listen_port: body.listen_port,
            exit_node: body.exit_node,
            allowed_ips,
            observed_ip: source,
            tags: Vec::new(),
            owner: None,
            gateway_port: body.gateway_port,
        };
        crate::server::devices::refuse_device_key(&self.state.registry(), &key)
            .map_err(|e| Refusal(e.http_status(), e.to_string()))?;
        let now = SystemTime::now();
        let login = match &body.login {
            Some(id) => Some(self.identity_login(&key, id)?),
            None => {
                self.check_login_of_key(&key)?;
                None
            }
        };
        let credential = match &login {
            Some(login) => Credential::Identity(login),
            None => Credential::from_token(body.token.as_deref()),
        };
        let record = match self.storage.register(registration, credential, now) {
            Err(StorageError::Denied(denied)) => {
                self.auth_failed(req, Some(key), None, &denied.why);
                return Err(Refusal(denied.status, denied.why));
            }
            Err(e) => return Err(e.into()),
            Ok(Registered::Unchanged(record)) => {
                self.metrics
                    .registrations_repeat
                    .fetch_add(1, Ordering::Relaxed);
                record
            }
            Ok(Registered::Written {
                record,
                fresh_address,
                token,
            }) => {
                self.announce_registration(req, &record, fresh_address, token, now);
                record
            }
        };
        Ok(ok_json(&RegisterResponse {
            success: true,
            assigned_ip: record.virtual_ip,
            network_cidr: network,
            peer_id: record.id,
            server_public_key: self.server_public_key,
            dns_name: record.dns_name,
        }))
    }

    /// Logs, counts and audits a registration that was stored.
    fn announce_registration(
        &self,
        req: &Request,
        record: &PeerRecord,
        fresh_address: bool,
        token: Option<TokenId>,
        now: SystemTime,
    ) {
        let counter = if fresh_address {
            log::info!(
                "registered {} ({}) as {} at {}",
                record.id,
                record.hostname,
                record.virtual_ip,
                record
                    .published_endpoint()
                    .map_or("unknown endpoint".into(), |e| e.to_string())
            );
            &self.metrics.registrations_new
        } else {
            log::info!(
                "updated registration of {} ({})",
                record.id,
                record.hostname
            );
            &self.metrics.registrations_repeat
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut event = AuditEvent::new(AuditKind::Registration, now)
            .source(req.remote)
            .peer_key(record.public_key)
            .detail(format!(
                "{} {} as {} with tags {}",
                if fresh_address {
                    "registered"
                } else {
                    "re-registered"
                },
                record.hostname,
                record.virtual_ip,
                crate::server::policy::describe_tags(&record.tags)
            ));
        if let Some(owner) = &record.owner {
            event.detail = format!(
                "{}, owned by {} (single sign-on)",
                event.detail,
                owner.label()
            );
        }
        if let Some(token) = token {
            event = event.token(token);
        }
        self.trust.audit(event);
    }

    pub(super) fn heartbeat(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let body: HeartbeatRequest = parse_body(req)?;
        self.check_owner(req, &key, &body.peer_id)?;
        let observed = req.remote.ip().to_canonical();
        let now = SystemTime::now();
        match self
            .storage
            .heartbeat(&body.peer_id, body.endpoint, observed, now)?
        {
            true => Ok(ok_json(&SuccessResponse { success: true })),
            false => Err(unknown_peer(&body.peer_id)),
        }
    }

    /// `POST /report`: an agent's view of its paths, kept in memory for the console.
    pub(super) fn report(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let body: AgentReport = parse_body(req)?;
        self.check_owner(req, &key, &body.peer_id)?;
        if body.paths.len() > MAX_REPORTED_PATHS {
            return Err(Refusal(
                400,
                format!(
                    "field `paths`: {} entries, at most {MAX_REPORTED_PATHS} are accepted",
                    body.paths.len()
                ),
            ));
        }
        if body.version.len() > 64 || body.version.chars().any(char::is_control) {
            return Err(Refusal(
                400,
                "field `version`: at most 64 printable characters".into(),
            ));
        }
        let stored = StoredReport {
            at: SystemTime::now(),
            report: body,
        };
        let mut reports = super::lock(&self.reports);
        let known = self.state.registry();
        reports.retain(|id, _| known.by_id(id).is_some());
        drop(known);
        reports.insert(stored.report.peer_id.clone(), stored);
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    /// The hostname of the exit node a peer reported using, if any.
    pub(super) fn reports_exit_name(
        &self,
        id: &PeerId,
        names: &std::collections::HashMap<crate::keys::PublicKey, String>,
    ) -> Option<String> {
        let reports = super::lock(&self.reports);
        let key = reports.get(id)?.report.exit_node?;
        Some(names.get(&key).cloned().unwrap_or_else(|| key.to_string()))
    }

    /// Removes a peer (on its own request or an operator's, `by` says which) and answers.
    pub(super) fn deregister(
        &self,
        req: &Request,
        id: &PeerId,
        by: &str,
        actor: Option<&str>,
    ) -> Result<Response, Refusal> {
        match self.storage.deregister(id)? {
            Some(record) => Ok(self.deregistered(req, id, &record, by, actor)),
            None => Err(unknown_peer(id)),
        }
    }

    /// What a deregistration does once the peer is gone: log, count, audit, and the answer.
    fn deregistered(
        &self,
        req: &Request,
        id: &PeerId,
        record: &PeerRecord,
        by: &str,
        actor: Option<&str>,
    ) -> Response {
        log::info!(
            "deregistered {id} ({}) {by}; {} returns to the pool",
            record.hostname,
            record.virtual_ip
        );
        self.metrics.deregistrations.fetch_add(1, Ordering::Relaxed);
        let mut event = AuditEvent::new(AuditKind::Deregistration, SystemTime::now())
            .source(req.remote)
            .peer_key(record.public_key)
            .detail(format!(
                "{} ({}) removed {by}",
                record.hostname, record.virtual_ip
            ));
        if let Some(actor) = actor {
            event = event.actor(actor);
        }
        self.trust.audit(event);
        ok_json(&SuccessResponse { success: true })
    }

    pub(super) fn peer_deregister(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
        id: Option<&str>,
    ) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let id = match id {
            Some(raw) => raw
                .parse::<PeerId>()
                .map_err(|e| Refusal(400, format!("path: {e}")))?,
            None => parse_body::<DeregisterRequest>(req)?.peer_id,
        };
        self.check_owner(req, &key, &id)?;
        self.deregister(req, &id, "by itself", None)
    }
}
