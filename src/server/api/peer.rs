//! The peer endpoints: register, heartbeat and deregister (the peer list and `/offline` are
//! in `sync`). Every one is authenticated by the key it concerns; see the module above for
//! the rules. Each change that moves the registry's version pokes the long-poll notifier.

use super::error::{ok_json, parse_body, too_many, unknown_peer, Refusal};
use super::{lock, Api, Authed};
use crate::proto::model::{
    DeregisterRequest, HeartbeatRequest, RegisterRequest, RegisterResponse, SuccessResponse,
    MAX_ALLOWED_IPS,
};
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::{Request, Response};
use crate::server::ipam::IpamError;
use crate::server::registry::{Prepared, Registration};
use crate::server::store::{JournalEntry, PeerRecord};
use crate::server::tokens::TokenRecord;
use crate::types::PeerId;
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

/// A registration that passed every check and was made durable (or needed nothing).
enum Stored {
    /// Same key, same details: nothing written; counts as a heartbeat.
    Unchanged(PeerRecord),
    /// A new or changed record, journaled and committed.
    Written {
        record: PeerRecord,
        fresh_address: bool,
        /// The join token redeemed for it, if any.
        token: Option<TokenRecord>,
    },
}

/// Why a registration was not stored.
enum Refused {
    /// Missing or unusable join token: audited as an authentication failure.
    Auth(u16, String),
    /// Anything else (pool exhausted, storage failure).
    Other(Refusal),
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
        let network = lock(&self.registry).network();
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
        };
        let now = SystemTime::now();
        if let Some(r) = &self.replica {
            let token = body.token.as_deref();
            return self.register_replica(r, req, key, registration, token, now, network);
        }
        // Decide and make durable under the locks; log, count and audit after releasing them.
        let record = match self.store_registration(registration, body.token.as_deref(), now) {
            Err(Refused::Auth(status, why)) => {
                self.auth_failed(req, Some(key), None, &why);
                return Err(Refusal(status, why));
            }
            Err(Refused::Other(refusal)) => return Err(refusal),
            Ok(Stored::Unchanged(record)) => {
                let moved = {
                    let mut registry = lock(&self.registry);
                    let before = registry.generation();
                    registry.heartbeat(&record.id, None, source, now);
                    registry.generation() != before
                };
                if moved {
                    self.changes.notify();
                }
                self.metrics
                    .registrations_repeat
                    .fetch_add(1, Ordering::Relaxed);
                record
            }
            Ok(Stored::Written {
                record,
                fresh_address,
                token,
            }) => {
                self.changes.notify();
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

    /// Prepares a registration and, if it changes anything, commits it: the token
    /// redemption (if any) saved first, then the journal entry, then the registry. Holds the
    /// store lock (the write order) and the token lock throughout, so nothing interleaves;
    /// a failure at any point undoes what was done before it. A known key keeps the tags it
    /// joined with; a new key needs a join token unless the server is open.
    fn store_registration(
        &self,
        mut registration: Registration,
        token: Option<&str>,
        now: SystemTime,
    ) -> Result<Stored, Refused> {
        let mut guard = lock(&self.store);
        let store = guard.as_mut().expect("the JSON store, without replicas");
        let mut tokens = lock(&self.trust.tokens);
        let known = lock(&self.registry).knows(&registration.public_key);
        let redeemed = match token {
            _ if known => None,
            None if self.trust.open => None,
            None => {
                return Err(Refused::Auth(
                    401,
                    "a join token is required to register a new key: pass --token \
                     (create one with `wgmesh token create` on the server)"
                        .to_owned(),
                ))
            }
            Some(text) => {
                let mut next = tokens.store.clone();
                let record = next
                    .redeem_record(text, now)
                    .map_err(|e| Refused::Auth(e.http_status(), e.to_string()))?
                    .clone();
                registration.tags = record.tags.clone();
                Some((next, record))
            }
        };
        let prepared = lock(&self.registry)
            .prepare(&registration, now)
            .map_err(|e| {
                Refused::Other(match e {
                    IpamError::Exhausted(_) => Refusal(503, e.to_string()),
                    other => Refusal(500, other.to_string()),
                })
            })?;
        let (record, fresh_address) = match &prepared {
            Prepared::Unchanged(record) => return Ok(Stored::Unchanged(record.clone())),
            Prepared::Write {
                record,
                fresh_address,
            } => (record.clone(), *fresh_address),
        };
        let failed = |e: std::io::Error| {
            log::error!("registration of {} failed: {e}", record.public_key);
            Refused::Other(Refusal(
                500,
                format!("registration could not be stored: {e}"),
            ))
        };
        let previous = tokens.store.clone();
        if let Some((next, _)) = &redeemed {
            if let Err(e) = tokens.replace(next.clone()) {
                lock(&self.registry).abort(&prepared);
                return Err(failed(e));
            }
        }
        if let Err(e) = store.append(&JournalEntry::Put {
            peer: record.clone(),
        }) {
            lock(&self.registry).abort(&prepared);
            if redeemed.is_some() {
                let _ = tokens.replace(previous);
            }
            return Err(failed(e));
        }
        lock(&self.registry).commit(record.clone());
        Ok(Stored::Written {
            record,
            fresh_address,
            token: redeemed.map(|(_, token)| token),
        })
    }

    /// Logs, counts and audits a registration that was stored.
    fn announce_registration(
        &self,
        req: &Request,
        record: &PeerRecord,
        fresh_address: bool,
        token: Option<TokenRecord>,
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
        if let Some(token) = token {
            event = event.token(token.id);
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
        if let Some(r) = &self.replica {
            return self.heartbeat_replica(r, &body.peer_id, body.endpoint, observed);
        }
        let (known, moved) = {
            let mut registry = lock(&self.registry);
            let before = registry.generation();
            let known = registry
                .heartbeat(&body.peer_id, body.endpoint, observed, SystemTime::now())
                .is_some();
            (known, registry.generation() != before)
        };
        if moved {
            self.changes.notify();
        }
        if !known {
            return Err(unknown_peer(&body.peer_id));
        }
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    pub(super) fn deregister(
        &self,
        req: &Request,
        id: &PeerId,
        by: &str,
    ) -> Result<Response, Refusal> {
        if let Some(r) = &self.replica {
            return self.deregister_replica(r, req, id, by);
        }
        let mut guard = lock(&self.store);
        let store = guard.as_mut().expect("the JSON store, without replicas");
        let Some(record) = lock(&self.registry).by_id(id).cloned() else {
            return Err(unknown_peer(id));
        };
        store
            .append(&JournalEntry::Delete {
                public_key: record.public_key,
            })
            .map_err(|e| Refusal(500, format!("deregistration could not be stored: {e}")))?;
        lock(&self.registry).remove(id);
        drop(guard);
        self.changes.notify();
        Ok(self.deregistered(req, id, &record, by))
    }

    /// What every deregistration (JSON store or replica) does once the peer is gone: log,
    /// count, audit, and the answer.
    pub(super) fn deregistered(
        &self,
        req: &Request,
        id: &PeerId,
        record: &PeerRecord,
        by: &str,
    ) -> Response {
        log::info!(
            "deregistered {id} ({}) {by}; {} returns to the pool",
            record.hostname,
            record.virtual_ip
        );
        self.metrics.deregistrations.fetch_add(1, Ordering::Relaxed);
        self.trust.audit(
            AuditEvent::new(AuditKind::Deregistration, SystemTime::now())
                .source(req.remote)
                .peer_key(record.public_key)
                .detail(format!(
                    "{} ({}) removed {by}",
                    record.hostname, record.virtual_ip
                )),
        );
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
        self.deregister(req, &id, "by itself")
    }
}
