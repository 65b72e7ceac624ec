//! The admin token endpoints when replicas share a database: every change to tokens is one
//! locked transaction, like a registration, so a token's uses are counted cluster-wide.

use super::error::{ok_json, Refusal};
use super::replica::{db_refusal, Replica};
use super::Api;
use crate::proto::model::SuccessResponse;
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::http::{Request, Response};
use crate::server::pg;
use std::time::SystemTime;

impl Api {
    /// The admin token endpoints on the shared database; None for other endpoints.
    pub(super) fn admin_tokens_replica(
        &self,
        r: &Replica,
        req: &Request,
        rest: &str,
        now: SystemTime,
    ) -> Option<Result<Response, Refusal>> {
        use crate::proto::admin::{TokenCreateRequest, TokenCreateResponse, TokenListResponse};
        let method = req.method.as_str();
        Some(match (method, rest) {
            ("GET", "tokens") => r.db.tokens().map_err(|e| db_refusal(&e)).map(|store| {
                ok_json(&TokenListResponse {
                    success: true,
                    tokens: store
                        .list()
                        .iter()
                        .map(|t| super::admin::token_view(t, now))
                        .collect(),
                })
            }),
            ("POST", "tokens") => (|| {
                let body: TokenCreateRequest = super::error::parse_body(req)?;
                let expires = body
                    .expires
                    .as_deref()
                    .map(crate::server::tokens::parse_expiry)
                    .transpose()
                    .map_err(|e| Refusal(400, format!("field `expires`: {e}")))?;
                let made = r.db.write("tokens", |tx| {
                    let mut store = pg::load_tokens(tx)?;
                    match store.create(body.uses, expires, body.tags.clone(), now) {
                        Ok((secret, record)) => {
                            pg::put_token(tx, &record)?;
                            Ok(Ok((secret, record)))
                        }
                        Err(e) => Ok(Err(e)),
                    }
                });
                let (secret, record) = made
                    .map_err(|e| db_refusal(&e))?
                    .map_err(|e| Refusal(e.http_status(), e.to_string()))?;
                self.trust.audit(
                    AuditEvent::new(AuditKind::TokenCreate, now)
                        .source(req.remote)
                        .token(record.id.clone())
                        .detail("created"),
                );
                log::info!("created join token {}", record.id);
                Ok(ok_json(&TokenCreateResponse {
                    info: super::admin::token_view(&record, now),
                    success: true,
                    token: secret,
                }))
            })(),
            ("DELETE", _) if rest.starts_with("tokens/") => (|| {
                let id = &rest["tokens/".len()..];
                let revoked = r.db.write("tokens", |tx| {
                    let mut store = pg::load_tokens(tx)?;
                    match store.revoke(id) {
                        Ok(record) => {
                            let record = record.clone();
                            pg::put_token(tx, &record)?;
                            Ok(Ok(record))
                        }
                        Err(e) => Ok(Err(e)),
                    }
                });
                let record = revoked
                    .map_err(|e| db_refusal(&e))?
                    .map_err(|e| Refusal(e.http_status(), e.to_string()))?;
                self.trust.audit(
                    AuditEvent::new(AuditKind::TokenRevoke, now)
                        .source(req.remote)
                        .token(record.id.clone())
                        .detail("revoked"),
                );
                Ok(ok_json(&SuccessResponse { success: true }))
            })(),
            _ => return None,
        })
    }
}
