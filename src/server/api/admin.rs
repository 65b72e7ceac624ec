//! The operator endpoints under `/admin/`: join tokens, the full peer list and policy
//! reload. Every one needs the admin secret.

use super::error::{ok_json, parse_body, Refusal};
use super::{lock, Api};
use crate::keys::PublicKey;
use crate::proto::model::SuccessResponse;
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::{Request, Response};
use crate::server::tokens::{Tag, TokenRecord};
use crate::server::trust::ADMIN_HEADER;
use crate::types::PeerId;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// `POST /admin/tokens`: what the operator asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenCreateRequest {
    #[serde(default)]
    uses: Option<u32>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
}

/// One token as `token list` shows it: never the hash, and a status column.
#[derive(Debug, Serialize)]
struct TokenView {
    id: String,
    uses_left: Option<u32>,
    expires_at: Option<String>,
    tags: Vec<Tag>,
    created_at: String,
    revoked: bool,
    status: String,
}

fn token_view(t: &TokenRecord, now: SystemTime) -> TokenView {
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

/// One peer in the admin view: everything the registry holds, offline peers included.
#[derive(Debug, Serialize)]
struct AdminPeerView {
    id: PeerId,
    public_key: PublicKey,
    virtual_ip: std::net::Ipv4Addr,
    hostname: String,
    os: String,
    endpoint: Option<String>,
    online: bool,
    tags: Vec<Tag>,
    registered_at: String,
    last_heartbeat: String,
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

    pub(super) fn admin(&self, req: &Request, rest: &str) -> Result<Response, Refusal> {
        self.admin_check(req)?;
        // HEAD is GET without the body (the connection layer drops it) on every resource.
        let method = match req.method.as_str() {
            "HEAD" => "GET",
            other => other,
        };
        let now = SystemTime::now();
        match (method, rest) {
            ("GET", "tokens") => {
                let tokens = lock(&self.trust.tokens);
                let list: Vec<TokenView> = tokens
                    .store
                    .list()
                    .iter()
                    .map(|t| token_view(t, now))
                    .collect();
                Ok(ok_json(
                    &serde_json::json!({"success": true, "tokens": list}),
                ))
            }
            ("POST", "tokens") => {
                let body: TokenCreateRequest = parse_body(req)?;
                let expires = body
                    .expires
                    .as_deref()
                    .map(crate::server::tokens::parse_expiry)
                    .transpose()
                    .map_err(|e| Refusal(400, format!("field `expires`: {e}")))?;
                let mut tokens = lock(&self.trust.tokens);
                let mut next = tokens.store.clone();
                let (secret, record) = next
                    .create(body.uses, expires, body.tags, now)
                    .map_err(|e| Refusal(e.http_status(), e.to_string()))?;
                tokens
                    .replace(next)
                    .map_err(|e| Refusal(500, format!("token could not be stored: {e}")))?;
                drop(tokens);
                self.trust.audit(
                    AuditEvent::new(AuditKind::TokenCreate, now)
                        .source(req.remote)
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
                log::info!("created join token {}", record.id);
                let view = token_view(&record, now);
                Ok(ok_json(
                    &serde_json::json!({"success": true, "token": secret, "info": view}),
                ))
            }
            ("GET", "peers") => {
                let records = lock(&self.registry).records();
                let list: Vec<AdminPeerView> = records
                    .iter()
                    .map(|r| AdminPeerView {
                        id: r.id.clone(),
                        public_key: r.public_key,
                        virtual_ip: r.virtual_ip,
                        hostname: r.hostname.to_string(),
                        os: r.os.to_string(),
                        endpoint: r.published_endpoint().map(|e| e.to_string()),
                        online: r.online,
                        tags: r.tags.clone(),
                        registered_at: crate::time::format_exact(r.registered_at),
                        last_heartbeat: crate::time::format_exact(r.last_heartbeat),
                    })
                    .collect();
                Ok(ok_json(
                    &serde_json::json!({"success": true, "peers": list}),
                ))
            }
            ("POST", "policy/reload") => match self.reload_policy(Some(req.remote)) {
                Ok((changed, policy)) => Ok(ok_json(
                    &serde_json::json!({"success": true, "changed": changed, "policy": policy}),
                )),
                Err(e) => Err(Refusal(400, format!("{e}; the old policy stays in force"))),
            },
            _ => {
                if let Some(id) = rest.strip_prefix("tokens/") {
                    if method != "DELETE" {
                        return Err(Refusal(
                            405,
                            format!("{method} is not allowed here: use DELETE"),
                        ));
                    }
                    let mut tokens = lock(&self.trust.tokens);
                    let mut next = tokens.store.clone();
                    let record = next
                        .revoke(id)
                        .map_err(|e| Refusal(e.http_status(), e.to_string()))?
                        .clone();
                    tokens
                        .replace(next)
                        .map_err(|e| Refusal(500, format!("token could not be stored: {e}")))?;
                    drop(tokens);
                    self.trust.audit(
                        AuditEvent::new(AuditKind::TokenRevoke, now)
                            .source(req.remote)
                            .token(record.id.clone())
                            .detail("revoked"),
                    );
                    log::info!("revoked join token {}", record.id);
                    return Ok(ok_json(&SuccessResponse { success: true }));
                }
                if let Some(raw) = rest.strip_prefix("peers/") {
                    if method != "DELETE" {
                        return Err(Refusal(
                            405,
                            format!("{method} is not allowed here: use DELETE"),
                        ));
                    }
                    let id: PeerId = raw
                        .parse()
                        .map_err(|e| Refusal(400, format!("path: {e}")))?;
                    return self.deregister(req, &id, "by an operator");
                }
                Err(Refusal(
                    404,
                    format!("no such admin endpoint: {method} /admin/{rest}"),
                ))
            }
        }
    }
}
