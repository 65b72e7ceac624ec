//! The operator endpoints under `/admin/`: join tokens, the full peer list and policy
//! reload. Every one needs the admin secret.

use super::error::{method_not_allowed, ok_json, parse_body, Refusal};
use super::Api;
use crate::proto::admin::{
    AdminPeerView, AdminPeersResponse, PolicyReloadResponse, TokenCreateRequest,
    TokenCreateResponse, TokenListResponse, TokenView,
};
use crate::proto::model::SuccessResponse;
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::{Request, Response};
use crate::server::tokens::TokenRecord;
use crate::server::trust::ADMIN_HEADER;
use crate::types::{PeerId, Tag};

/// The actor the admin API's actions are audited as.
pub(super) const ADMIN_ACTOR: &str = "admin";
use std::time::SystemTime;

pub(super) fn token_view(t: &TokenRecord, now: SystemTime) -> TokenView {
    TokenView {
        id: t.id.to_string(),
        uses_left: t.uses_left,
        expires_at: t.expires_at.map(crate::time::format_exact),
        tags: t.tags.clone(),
        created_at: crate::time::format_exact(t.created_at),
        revoked: t.revoked,
        status: match t.check(now) {
            Ok(()) => "usable".into(),
            Err(crate::server::tokens::TokenError::Revoked { .. }) => "revoked".into(),
            Err(crate::server::tokens::TokenError::Expired { .. }) => "expired".into(),
            Err(crate::server::tokens::TokenError::UsedUp { .. }) => "used up".into(),
            Err(e) => e.to_string(),
        },
    }
}

impl Api {
    /// Checks the admin secret; failures count against the source's failure budget.
    pub(super) fn admin_check(&self, req: &Request) -> Result<(), Refusal> {
        self.check_failure_budget(req)?;
        if self.trust.admin.matches(req.header(ADMIN_HEADER)) {
            return Ok(());
        }
        let why = "admin requests need `Authorization: Bearer SECRET` with the server's \
                   admin.secret (peers' own credentials never open /admin)";
        self.auth_failed(req, None, None, why);
        Err(Refusal(401, why.into()))
    }

    /// Routes `/admin/REST` after checking the admin secret.
    pub(super) fn admin(&self, req: &Request, rest: &str) -> Result<Response, Refusal> {
        self.admin_check(req)?;
        // HEAD is GET without the body (the connection layer drops it) on every resource.
        let method = match req.method.as_str() {
            "HEAD" => "GET",
            other => other,
        };
        let now = SystemTime::now();
        match (method, rest) {
            ("GET", "tokens") => self.list_tokens(now),
            ("POST", "tokens") => self.create_token(req, now),
            ("GET", "peers") => Ok(self.admin_peers()),
            ("POST", "policy/reload") => {
                match self.reload_policy(Some(req.remote), Some(ADMIN_ACTOR)) {
                    Ok(reload) => Ok(ok_json(&PolicyReloadResponse {
                        changed: reload.changed,
                        policy: reload.text,
                        success: true,
                    })),
                    Err(e) => Err(Refusal(
                        e.http_status(),
                        format!("{e}; the old policy stays in force"),
                    )),
                }
            }
            (_, _) if rest == "routes" || rest.starts_with("routes/") => {
                self.admin_routes(req, method, rest)
            }
            (_, "devices") => self.admin_devices(req, method, None),
            (_, _) if rest.starts_with("devices/") => {
                self.admin_devices(req, method, Some(&rest["devices/".len()..]))
            }
            (_, _) if rest.starts_with("tokens/") => {
                only_delete(method)?;
                self.revoke_token(req, &rest["tokens/".len()..], now)
            }
            ("POST", _) if rest.starts_with("peers/") && rest.ends_with("/logout") => {
                let id: PeerId = rest["peers/".len()..rest.len() - "/logout".len()]
                    .parse()
                    .map_err(|e| Refusal(400, format!("path: {e}")))?;
                self.end_login(req, &id, now, ADMIN_ACTOR)
            }
            (_, _) if rest.starts_with("peers/") => {
                only_delete(method)?;
                let id: PeerId = rest["peers/".len()..]
                    .parse()
                    .map_err(|e| Refusal(400, format!("path: {e}")))?;
                self.deregister(req, &id, "by an operator", Some(ADMIN_ACTOR))
            }
            _ => Err(Refusal(
                404,
                format!("no such admin endpoint: {method} /admin/{rest}"),
            )),
        }
    }

    fn list_tokens(&self, now: SystemTime) -> Result<Response, Refusal> {
        let store = self.storage.tokens()?;
        Ok(ok_json(&TokenListResponse {
            success: true,
            tokens: store.list().iter().map(|t| token_view(t, now)).collect(),
        }))
    }

    fn create_token(&self, req: &Request, now: SystemTime) -> Result<Response, Refusal> {
        let body: TokenCreateRequest = parse_body(req)?;
        let (secret, record) = self.issue_token(
            req.remote,
            ADMIN_ACTOR,
            body.uses,
            body.expires.as_deref(),
            body.tags,
            now,
        )?;
        Ok(ok_json(&TokenCreateResponse {
            info: token_view(&record, now),
            success: true,
            token: secret,
        }))
    }

    /// Creates a join token (for `/admin/tokens` and the console), audits it as `actor`'s
    /// and returns the secret, which is never stored, with the record.
    pub(super) fn issue_token(
        &self,
        source: std::net::SocketAddr,
        actor: &str,
        uses: Option<u32>,
        expires: Option<&str>,
        tags: Vec<Tag>,
        now: SystemTime,
    ) -> Result<(String, TokenRecord), Refusal> {
        let expires = expires
            .map(crate::server::tokens::parse_expiry)
            .transpose()
            .map_err(|e| Refusal(400, format!("field `expires`: {e}")))?;
        let mut secret = None;
        let record = self.storage.change_tokens(&mut |store| {
            let (text, record) = store.create(uses, expires, tags.clone(), now)?;
            secret = Some(text);
            Ok(record)
        })?;
        self.trust.audit(
            AuditEvent::new(AuditKind::TokenCreate, now)
                .source(source)
                .actor(actor)
                .token(record.id.clone())
                .detail(format!(
                    "uses {}, expires {}, tags {}",
                    record
                        .uses_left
                        .map_or("unlimited".into(), |n| n.to_string()),
                    record
                        .expires_at
                        .map_or("never".into(), crate::time::format_exact),
                    crate::server::policy::describe_tags(&record.tags)
                )),
        );
        log::info!("created join token {} ({actor})", record.id);
        Ok((secret.unwrap_or_default(), record))
    }

    fn revoke_token(&self, req: &Request, id: &str, now: SystemTime) -> Result<Response, Refusal> {
        self.revoke(req.remote, ADMIN_ACTOR, id, now)?;
        Ok(ok_json(&SuccessResponse { success: true }))
    }

    /// Revokes a join token (for `/admin/tokens/ID` and the console), audited as `actor`'s.
    pub(super) fn revoke(
        &self,
        source: std::net::SocketAddr,
        actor: &str,
        id: &str,
        now: SystemTime,
    ) -> Result<TokenRecord, Refusal> {
        let record = self
            .storage
            .change_tokens(&mut |store| store.revoke(id).cloned())?;
        self.trust.audit(
            AuditEvent::new(AuditKind::TokenRevoke, now)
                .source(source)
                .actor(actor)
                .token(record.id.clone())
                .detail("revoked"),
        );
        log::info!("revoked join token {} ({actor})", record.id);
        Ok(record)
    }

    fn admin_peers(&self) -> Response {
        let expiry = self.login_expiry();
        let records = self.state.registry().records();
        let peers = records
            .iter()
            .map(|r| AdminPeerView {
                id: r.id.clone(),
                public_key: r.public_key,
                virtual_ip: r.virtual_ip,
                hostname: r.hostname.to_string(),
                dns_name: r.dns_name.as_ref().map(|n| n.to_string()),
                os: r.os.to_string(),
                endpoint: r.published_endpoint().map(|e| e.to_string()),
                online: r.online,
                tags: r.tags.clone(),
                registered_at: crate::time::format_exact(r.registered_at),
                last_heartbeat: crate::time::format_exact(r.last_heartbeat),
                owner: r.owner.as_ref().map(|o| o.label().to_owned()),
                owner_login: r
                    .owner
                    .as_ref()
                    .map(|o| crate::time::format(o.logged_in_at)),
                owner_login_expires: r
                    .owner
                    .as_ref()
                    .map(|o| crate::time::format(o.logged_in_at + expiry)),
                owner_logged_out: r
                    .owner
                    .as_ref()
                    .and_then(|o| o.logged_out_at)
                    .map(crate::time::format),
            })
            .collect();
        ok_json(&AdminPeersResponse {
            peers,
            success: true,
        })
    }
}

/// Refuses anything but DELETE on a single token or peer.
fn only_delete(method: &str) -> Result<(), Refusal> {
    match method {
        "DELETE" => Ok(()),
        _ => Err(method_not_allowed(
            format!("{method} is not allowed here: use DELETE"),
            "DELETE",
        )),
    }
}
