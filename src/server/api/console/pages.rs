//! The console's pages: each gathers what it shows from the registry, the store, the
//! reports and the audit log, and hands it to `crate::server::console::render`.

use super::respond::html;
use super::Visit;
use crate::keys::PublicKey;
use crate::server::api::error::Refusal;
use crate::server::audit::AuditEvent;
use crate::server::console::render::{self, access, audit, server, tokens};
use crate::server::console::view::{self, PeerFilter};
use crate::server::http::Response;
use crate::server::store::PeerRecord;
use crate::types::PeerId;
use std::collections::HashMap;

impl Visit<'_> {
    /// Every GET under `/console` for a logged-in browser.
    pub(super) fn get(&self, path: &str) -> Result<Response, Refusal> {
        match path {
            "/console/peers" => Ok(self.peers()),
            "/console/tokens" => self.tokens(None, None),
            "/console/devices" => Ok(self.devices(None, None)),
            "/console/access" => Ok(self.access(None)),
            "/console/audit" => Ok(self.audit()),
            "/console/server" => Ok(self.server()),
            _ => {
                let rest = path
                    .strip_prefix("/console/peers/")
                    .ok_or_else(|| not_found(path))?;
                match rest.strip_suffix("/remove") {
                    Some(id) => self.confirm_remove(id),
                    None => self.peer(rest),
                }
            }
        }
    }

    fn peers(&self) -> Response {
        let filter = PeerFilter::parse(&self.query());
        let mesh6 = self.mesh6();
        let (page, tags, version) = {
            let registry = self.api.state.registry();
            let reports = super::lock(&self.api.reports);
            let name_of = |key: &PublicKey| {
                registry
                    .by_id(&crate::types::PeerId::for_key(key))
                    .map(|r| r.hostname.to_string())
            };
            let page = view::select(registry.iter(), &reports, &name_of, mesh6, &filter);
            let tags: std::collections::BTreeSet<&str> = registry
                .iter()
                .flat_map(|r| r.tags.iter().map(|t| t.as_str()))
                .collect();
            let tags: Vec<String> = tags.into_iter().map(str::to_owned).collect();
            (page, tags, registry.generation())
        };
        html(
            200,
            render::peers::list(self.viewer(), &filter, &page, &tags, self.now, version),
        )
    }

    fn mesh6(&self) -> ipnet::Ipv6Net {
        crate::proto::mesh6::prefix(&self.api.server_public_key)
    }

    /// The record and row of the peer named in a URL.
    fn find_peer(&self, raw: &str) -> Result<(PeerRecord, view::PeerRow), Refusal> {
        let id: PeerId = raw
            .parse()
            .map_err(|e| Refusal(404, format!("no such peer: {e}")))?;
        let record = self
            .api
            .state
            .registry()
            .by_id(&id)
            .cloned()
            .ok_or_else(|| {
                Refusal(
                    404,
                    format!("no peer {id}: it was removed, or never joined"),
                )
            })?;
        let reports = super::lock(&self.api.reports);
        let report = reports.get(&record.id).map(|s| &s.report);
        let row = view::row_of(&record, report, &|_| None, self.mesh6());
        Ok((record, row))
    }

    fn peer(&self, raw: &str) -> Result<Response, Refusal> {
        let (record, mut row) = self.find_peer(raw)?;
        let (records, version) = {
            let registry = self.api.state.registry();
            (registry.records(), registry.generation())
        };
        let names: HashMap<PublicKey, String> = records
            .iter()
            .map(|r| (r.public_key, r.hostname.to_string()))
            .collect();
        if let Some(used) = self.api.reports_exit_name(&record.id, &names) {
            row.exit_used = Some(used);
        }
        let (policy, _) = self.api.state.policy.current();
        let reachable = view::reachable_from(&record, &records, &policy);
        let report = super::lock(&self.api.reports).get(&record.id).cloned();
        let advertised: Vec<_> = crate::server::api::subnet_routes::route_views(&records)
            .into_iter()
            .filter(|v| v.peer_id == record.id)
            .collect();
        let routes = render::subnet_routes::section(self.viewer(), record.id.as_str(), &advertised);
        Ok(html(
            200,
            render::peers::detail(
                self.viewer(),
                &row,
                report.as_ref(),
                &names,
                &reachable,
                (self.now, version),
                routes,
            ),
        ))
    }

    fn confirm_remove(&self, raw: &str) -> Result<Response, Refusal> {
        self.require_admin()?;
        let (_, row) = self.find_peer(raw)?;
        Ok(html(
            200,
            render::peers::confirm_remove(self.viewer(), &row),
        ))
    }

    /// The tokens page, with a token just created (its secret) or an error to show.
    pub(super) fn tokens(
        &self,
        created: Option<(String, crate::server::tokens::TokenRecord)>,
        error: Option<&str>,
    ) -> Result<Response, Refusal> {
        let store = self.api.storage.tokens()?;
        let list: Vec<_> = store
            .list()
            .iter()
            .map(|t| crate::server::api::admin::token_view(t, self.now))
            .collect();
        let created_by: HashMap<String, String> = self
            .api
            .trust
            .audit_events()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.event == crate::server::audit::AuditKind::TokenCreate)
            .filter_map(|e| {
                Some((
                    e.token_id?.to_string(),
                    e.actor.unwrap_or_else(|| "admin API".into()),
                ))
            })
            .collect();
        let created_view = created
            .as_ref()
            .map(|(_, record)| crate::server::api::admin::token_view(record, self.now));
        let up_line = created.as_ref().map(|(secret, _)| {
            format!(
                "WGMESH_TOKEN={secret} wgmesh up --server {}",
                self.server_url()
            )
        });
        let shown = match (&created, &created_view, &up_line) {
            (Some((secret, _)), Some(view), Some(line)) => Some(tokens::Created {
                secret,
                view,
                up_line: line,
            }),
            _ => None,
        };
        let status = if error.is_some() { 400 } else { 200 };
        Ok(html(
            status,
            tokens::tokens(self.viewer(), &list, &created_by, shown, error),
        ))
    }

    /// The URL agents reach this server at, as the browser does.
    fn server_url(&self) -> String {
        let scheme = if self.console.secure { "https" } else { "http" };
        let host = self.req.header("host").unwrap_or("SERVER:8080");
        format!("{scheme}://{host}")
    }

    /// The access page, with a candidate policy and its check when one was posted.
    pub(super) fn access(&self, candidate: Option<(&str, access::Check<'_>)>) -> Response {
        let (policy, _) = self.api.state.policy.current();
        let records = self.api.state.registry().records();
        let groups = view::tag_groups(&records, &policy);
        let matrix = view::matrix(&groups, &policy);
        let networks = view::group_networks(&groups, &policy);
        let mut hostnames: Vec<String> = records.iter().map(|r| r.hostname.to_string()).collect();
        hostnames.sort();
        let chosen = self.query().get("peer").cloned();
        let reach = chosen.as_ref().and_then(|h| {
            let me = records.iter().find(|r| r.hostname.as_str() == h)?;
            Some(view::reachable_from(me, &records, &policy))
        });
        let policy_text = policy.to_json_pretty();
        let v = access::AccessView {
            policy: &policy_text,
            file: self
                .api
                .state
                .policy
                .path()
                .map(|p| p.display().to_string()),
            groups: &groups,
            matrix: &matrix,
            networks: &networks,
            candidate,
            hostnames: &hostnames,
            one_peer: chosen.as_deref().zip(reach.as_deref()),
        };
        html(200, access::access(self.viewer(), &v))
    }

    fn audit(&self) -> Response {
        let q = self.query();
        let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let mut filter = audit::AuditFilter {
            actor: get("actor"),
            action: get("action"),
            peer: get("peer"),
            since: get("since"),
            page: get("page").parse().ok().filter(|p| *p >= 1).unwrap_or(1),
        };
        let (since, error) = match filter.since.as_str() {
            "" => (None, None),
            text => match crate::time::parse(text) {
                Ok(t) => (Some(t), None),
                Err(e) => (None, Some(format!("since: {e}"))),
            },
        };
        let all = self.api.trust.audit_events();
        let error = error.or_else(|| {
            all.as_ref()
                .err()
                .map(|e| format!("cannot read the audit log: {e}"))
        });
        let mut events: Vec<AuditEvent> = all
            .unwrap_or_default()
            .into_iter()
            .filter(|e| audit_keeps(&filter, since, e))
            .collect();
        events.reverse();
        let matching = events.len();
        let pages = matching.div_ceil(audit::AUDIT_PAGE).max(1);
        filter.page = filter.page.min(pages);
        let shown: Vec<AuditEvent> = events
            .into_iter()
            .skip((filter.page - 1) * audit::AUDIT_PAGE)
            .take(audit::AUDIT_PAGE)
            .collect();
        html(
            200,
            audit::audit(
                self.viewer(),
                &filter,
                &shown,
                matching,
                pages,
                error.as_deref(),
            ),
        )
    }

    fn server(&self) -> Response {
        let (total, online, version) = {
            let registry = self.api.state.registry();
            (registry.len(), registry.online(), registry.generation())
        };
        let per_minute = self.console.per_minute();
        let v = server::ServerView {
            version: env!("CARGO_PKG_VERSION"),
            store: self.api.storage.kind(),
            database: self
                .api
                .storage
                .database_health()
                .map(|h| h.map_err(|e| e.detail().to_owned())),
            peers: (total, online),
            mesh_version: version,
            replicas: self.api.storage.replicas().unwrap_or_default(),
            relay: self.api.monitored.relay.get().map(|r| r.summary()),
            per_minute,
        };
        html(200, server::server(self.viewer(), &v))
    }
}

/// Whether an audit event passes the page's filter.
fn audit_keeps(
    f: &audit::AuditFilter,
    since: Option<std::time::SystemTime>,
    e: &AuditEvent,
) -> bool {
    let action = serde_json::to_value(e.event)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    (f.action.is_empty() || action == f.action)
        && (f.actor.is_empty() || e.actor.as_deref().is_some_and(|a| a.contains(&f.actor)))
        && (f.peer.is_empty()
            || e.peer_id
                .as_ref()
                .is_some_and(|p| p.as_str().contains(&f.peer))
            || e.public_key
                .is_some_and(|k| k.to_string().contains(&f.peer)))
        && since.is_none_or(|t| e.time >= t)
}

fn not_found(path: &str) -> Refusal {
    Refusal(
        404,
        format!("no console page {path}: start at /console/peers"),
    )
}
