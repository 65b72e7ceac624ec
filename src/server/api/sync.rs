//! Live sync on the API: `/peers` with `since` and `wait`, and `POST /offline`. A delta is
//! computed and serialized once per tag group, `since` and version (`super::super::changes`
//! decides what changed and who may see it) and cut per caller; a long-poll with nothing to
//! say is parked in the connection layer (`Park`) and resumed by the `Notifier` every
//! registry change pokes.

use super::error::{ok_json, parse_body, unknown_peer, Refusal};
use super::{lock, Api, Authed, RequestLine};
use crate::proto::model::{OfflineRequest, PeerInfo, SuccessResponse};
use crate::server::changes::{self, PeerState, Since};
use crate::server::http::{Body, Park, Reply, Request, Response, Wake};
use crate::server::live::{self, GroupDelta, PeersQuery};
use crate::server::metrics::Endpoint as MetricEndpoint;
use crate::server::policy::Party;
use crate::server::route_access::Viewer;
use crate::server::storage::WentOffline;
use crate::types::PeerId;
use std::sync::Arc;
use std::time::Instant;

/// What `/peers?since=N` has for one caller right now.
enum SinceAnswer {
    /// Send this (a delta or the full list).
    Ready(Response),
    /// Nothing this caller sees changed; it is current at this version.
    Nothing(u64),
}

/// What a tag group at `since` needs.
enum GroupAnswer {
    /// Nothing changed at all.
    Current(u64),
    /// `since` is unknown or too old: the full list.
    Full,
    /// The group's delta (which may still be empty for a given caller).
    Delta(Arc<GroupDelta>),
}

fn delta_response(body: Vec<u8>) -> Response {
    Response::json(200, body)
}

/// A long-poll held until something its caller sees changes: everything needed to answer
/// it later, since the request itself (and its nonce) cannot be run again.
struct HeldPoll {
    id: PeerId,
    party: Party,
    since: u64,
    deadline: Instant,
    authed: Option<Authed>,
    method: String,
    target: String,
    remote: std::net::SocketAddr,
}

impl Api {
    pub(super) fn etag(&self, generation: u64, policy_version: u64) -> String {
        format!("\"{:016x}-{generation}-{policy_version}\"", self.epoch)
    }

    /// `GET /peers` without holding: a long-poll reaching here (outside the connection
    /// layer's parking) is answered at once.
    pub(super) fn peers(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<Response, Refusal> {
        let (query, party) = self.peers_query(req, authed)?;
        Ok(self.peers_answer(req.header("if-none-match"), &query, &party))
    }

    /// Authenticates a `/peers` request and parses it; returns the query and the caller's
    /// party (its tags, and its approved routes when it is a subnet router).
    fn peers_query(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<(PeersQuery, Party), Refusal> {
        let key = self.authenticate(req, authed)?;
        let query =
            PeersQuery::parse(|name| req.query_param(name)).map_err(|e| Refusal(400, e.0))?;
        self.check_owner(req, &key, &query.peer_id)?;
        let party = match self.state.registry().by_id(&query.peer_id) {
            Some(record) => crate::server::registry::party(record),
            None => return Err(unknown_peer(&query.peer_id)),
        };
        Ok((query, party))
    }

    /// The answer to a `/peers` query right now: the full list (or 304), or what changed
    /// since its version (empty when nothing did).
    fn peers_answer(
        &self,
        if_none_match: Option<&str>,
        query: &PeersQuery,
        tags: &Party,
    ) -> Response {
        let id = &query.peer_id;
        let Some(since) = query.since else {
            return self.full_list(if_none_match, id, tags);
        };
        match self.answer_since(if_none_match, id, tags, since) {
            SinceAnswer::Ready(response) => response,
            SinceAnswer::Nothing(version) => delta_response(live::empty_delta(version)),
        }
    }

    /// The whole list a caller may see (`"full": true`), or 304 when its ETag is current.
    fn full_list(&self, if_none_match: Option<&str>, id: &PeerId, tags: &Party) -> Response {
        let generation = self.state.registry().generation();
        let (_, policy_version) = self.state.policy.current();
        let etag = self.etag(generation, policy_version);
        if let Some(tags) = if_none_match {
            if tags.split(',').any(|t| t.trim() == etag || t.trim() == "*") {
                return Response {
                    status: 304,
                    headers: vec![("ETag", etag)],
                    body: Body::Empty,
                };
            }
        }
        let cache = self.cache.current(tags, &self.state);
        let parts = cache.parts_for(id);
        Response {
            status: 200,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("ETag", self.etag(cache.generation, cache.policy_version)),
            ],
            body: Body::Shared(cache.body.clone(), parts),
        }
    }

    /// What a caller at version `since` gets now: a delta, the full list when `since` cannot
    /// be answered as a delta, or nothing (with the version it is current at). A caller whose
    /// own record changed gets the full list when it advertises routes or the policy grants
    /// routes by prefix: its routes decide whom it sees and whether it is told each peer's
    /// `reach`, and a delta only knows its party now.
    fn answer_since(
        &self,
        if_none_match: Option<&str>,
        id: &PeerId,
        tags: &Party,
        since: u64,
    ) -> SinceAnswer {
        // A replica behind the version another replica gave this caller catches up first.
        self.storage.catch_up_to(since);
        let routed = tags.serves || self.state.policy.current().0.has_prefixes();
        match self.group_delta(tags, since) {
            GroupAnswer::Full => SinceAnswer::Ready(self.full_list(if_none_match, id, tags)),
            GroupAnswer::Delta(delta) if routed && delta.mentions(id) => {
                SinceAnswer::Ready(self.full_list(if_none_match, id, tags))
            }
            GroupAnswer::Current(version) => SinceAnswer::Nothing(version),
            GroupAnswer::Delta(delta) if delta.is_empty_for(id) => {
                SinceAnswer::Nothing(delta.version)
            }
            GroupAnswer::Delta(delta) => SinceAnswer::Ready(delta_response(delta.body_for(id))),
        }
    }

    /// The delta from `since` to now for a tag group, computed and serialized once per
    /// group, `since` and version, whoever asks. The policy is read under the registry lock,
    /// where reloads swap it, so a delta and its version always belong together.
    fn group_delta(&self, group: &Party, since: u64) -> GroupAnswer {
        let mut slots = lock(&self.deltas);
        let key = (group.clone(), since);
        let registry = self.state.registry();
        let version = registry.generation();
        if let Some(delta) = slots.get(&key).filter(|d| d.version == version) {
            return GroupAnswer::Delta(delta.clone());
        }
        let (peers, policy_then) = match registry.changes().since(since) {
            Since::Current => return GroupAnswer::Current(version),
            Since::Full => return GroupAnswer::Full,
            Since::Delta { peers, policy_then } => (peers, policy_then),
        };
        let (policy, _) = self.state.policy.current();
        let plan = changes::delta(
            &peers,
            policy_then.as_deref(),
            &policy,
            group,
            |id| {
                registry.by_id(id).map(|r| PeerState {
                    tags: &r.tags,
                    routes: &r.approved_routes,
                    online: r.online,
                })
            },
            registry.online_ids(),
        );
        let mut viewer = Viewer::new(&policy, group);
        let entries: Vec<PeerInfo> = plan
            .changed
            .iter()
            .filter_map(|id| {
                let party = crate::server::registry::party(registry.by_id(id)?);
                Some(viewer.shape(&party, registry.info(id)?))
            })
            .collect();
        drop(registry);
        let delta = Arc::new(GroupDelta {
            version,
            changed: entries
                .into_iter()
                .map(|entry| {
                    let bytes = serde_json::to_vec(&entry).expect("API types always serialize");
                    (entry.id, bytes)
                })
                .collect(),
            removed: plan.removed,
        });
        slots.retain(|_, d| d.version == version);
        slots.insert(key, delta.clone());
        GroupAnswer::Delta(delta)
    }

    /// `POST /offline`: a peer stopping on purpose leaves everyone's list now, keeping its
    /// registration and address; its next heartbeat or registration brings it back.
    pub(super) fn offline(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
    ) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let body: OfflineRequest = parse_body(req)?;
        self.check_owner(req, &key, &body.peer_id)?;
        match self.storage.offline(&body.peer_id)? {
            WentOffline::Unknown => return Err(unknown_peer(&body.peer_id)),
            WentOffline::Now => log::info!("peer {} went offline on purpose", body.peer_id),
            WentOffline::Already => {}
        }
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    /// `GET /peers?...&wait=SECS`: answered now when there is something to say (or the
    /// request is refused), else parked in the connection layer without a thread until the
    /// version moves or the wait runs out.
    pub(super) fn long_poll(&self, req: &Request) -> Reply {
        let started = Instant::now();
        let line = RequestLine {
            method: &req.method,
            target: &req.target,
            remote: req.remote,
        };
        let mut authed = None;
        let prepared = self.peers_query(req, &mut authed);
        let (query, party) = match prepared {
            Ok(ok) => ok,
            Err(refusal) => {
                return Reply::Now(self.finish(
                    &line,
                    MetricEndpoint::Peers,
                    started,
                    authed.as_ref(),
                    Err(refusal),
                ))
            }
        };
        let (Some(since), Some(wait), Some(api)) = (
            query.since,
            query.wait,
            self.me.get().and_then(std::sync::Weak::upgrade),
        ) else {
            let result = self.peers_answer(req.header("if-none-match"), &query, &party);
            return Reply::Now(self.finish(
                &line,
                MetricEndpoint::Peers,
                started,
                authed.as_ref(),
                Ok(result),
            ));
        };
        let held = HeldPoll {
            id: query.peer_id,
            party,
            since,
            deadline: Instant::now() + wait,
            authed,
            method: req.method.clone(),
            target: req.target.clone(),
            remote: req.remote,
        };
        api.hold(held, None)
    }

    /// Answers a held long-poll if its caller has something to see (or its time ran out),
    /// else parks it (again) until the next change.
    fn hold(self: Arc<Self>, mut held: HeldPoll, wake: Option<Wake>) -> Reply {
        let started = Instant::now();
        let seen = self.state.changes().version();
        // The caller's party as it is now: an approval while it waited changes whom a
        // subnet router sees.
        if let Some(record) = self.state.registry().by_id(&held.id) {
            held.party = crate::server::registry::party(record);
        }
        let answer = self.answer_since(None, &held.id, &held.party, held.since);
        let response = match answer {
            SinceAnswer::Ready(response) => response,
            SinceAnswer::Nothing(version)
                if wake == Some(Wake::Deadline) || Instant::now() >= held.deadline =>
            {
                delta_response(live::empty_delta(version))
            }
            SinceAnswer::Nothing(_) => {
                let (notifier, deadline) = (self.state.changes().clone(), held.deadline);
                let api = self.clone();
                return Reply::Park(Park::new(&notifier, seen, deadline, move |wake| {
                    api.hold(held, Some(wake))
                }));
            }
        };
        let line = RequestLine {
            method: &held.method,
            target: &held.target,
            remote: held.remote,
        };
        Reply::Now(self.finish(
            &line,
            MetricEndpoint::Peers,
            started,
            held.authed.as_ref(),
            Ok(response),
        ))
    }
}
