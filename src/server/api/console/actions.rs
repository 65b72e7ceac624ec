//! What a logged-in admin can change from the console, each a form post that has passed
//! the CSRF and Origin checks: removing a peer, creating and revoking tokens, reloading the
//! policy; plus checking a candidate policy (changes nothing) and logging out. Every change
//! calls the same `Api` method as the admin API and is audited with the session's actor.

use super::respond::see_other;
use super::{session, Visit};
use crate::server::api::error::Refusal;
use crate::server::console::render::access::Check;
use crate::server::http::Response;
use crate::server::policy::Policy;
use crate::server::storage::subnet_routes::Verdict;
use crate::types::{PeerId, Tag};

impl Visit<'_> {
    /// Every POST under `/console` for a logged-in browser.
    pub(super) fn post(&self, path: &str) -> Result<Response, Refusal> {
        match path {
            "/console/logout" => Ok(self.logout()),
            "/console/tokens" => self.create_token(),
            "/console/devices" => self.add_device(),
            "/console/access/check" => Ok(self.check_policy()),
            "/console/access/reload" => self.reload_policy(),
            _ => {
                if let Some(id) = path
                    .strip_prefix("/console/tokens/")
                    .and_then(|r| r.strip_suffix("/revoke"))
                {
                    return self.revoke_token(id);
                }
                if let Some(name) = path
                    .strip_prefix("/console/devices/")
                    .and_then(|r| r.strip_suffix("/remove"))
                {
                    return self.remove_device(name);
                }
                if let Some(id) = path
                    .strip_prefix("/console/peers/")
                    .and_then(|r| r.strip_suffix("/remove"))
                {
                    return self.remove_peer(id);
                }
                if let Some(id) = path
                    .strip_prefix("/console/peers/")
                    .and_then(|r| r.strip_suffix("/routes/approve"))
                {
                    return self.decide_route(id, Verdict::Approve);
                }
                if let Some(id) = path
                    .strip_prefix("/console/peers/")
                    .and_then(|r| r.strip_suffix("/routes/reject"))
                {
                    return self.decide_route(id, Verdict::Reject);
                }
                if let Some(id) = path
                    .strip_prefix("/console/peers/")
                    .and_then(|r| r.strip_suffix("/end-login"))
                {
                    return self.end_login(id);
                }
                Err(Refusal(404, format!("no console action {path}")))
            }
        }
    }

    fn logout(&self) -> Response {
        self.console.sessions.close(&self.session_id);
        see_other("/console/login")
            .with_header("Set-Cookie", session::clear_cookie(self.console.secure))
    }

    fn remove_peer(&self, raw: &str) -> Result<Response, Refusal> {
        self.require_admin()?;
        let id: PeerId = raw
            .parse()
            .map_err(|e| Refusal(400, format!("peer id: {e}")))?;
        self.api.deregister(
            self.req,
            &id,
            "from the console",
            Some(self.session.role.actor()),
        )?;
        Ok(see_other("/console/peers"))
    }

    /// Ends a peer's single sign-on login (as `wgmesh peers logout` does).
    fn end_login(&self, raw: &str) -> Result<Response, Refusal> {
        self.require_admin()?;
        let id: PeerId = raw
            .parse()
            .map_err(|e| Refusal(400, format!("peer id: {e}")))?;
        self.api
            .end_login(self.req, &id, self.now, self.session.role.actor())?;
        Ok(see_other(&format!("/console/peers/{id}")))
    }

    fn create_token(&self) -> Result<Response, Refusal> {
        self.require_admin()?;
        let form = self.form();
        let field = |k: &str| form.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let parsed = (|| {
            let uses = match field("uses") {
                None => None,
                Some(n) => Some(n.parse::<u32>().map_err(|_| {
                    format!("uses: {n:?} is not a whole number; leave it empty for unlimited")
                })?),
            };
            let tags = field("tags")
                .unwrap_or_default()
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .map(|t| t.parse::<Tag>().map_err(|e| format!("tags: {e}")))
                .collect::<Result<Vec<Tag>, String>>()?;
            let expires = field("expires").filter(|e| *e != "never");
            Ok::<_, String>((uses, tags, expires))
        })();
        let (uses, tags, expires) = match parsed {
            Ok(p) => p,
            Err(why) => return self.tokens(None, Some(&why)),
        };
        let issued = self.api.issue_token(
            self.req.remote,
            self.session.role.actor(),
            uses,
            expires,
            tags,
            self.now,
        );
        match issued {
            Ok(created) => self.tokens(Some(created), None),
            Err(refusal) if refusal.status == 400 => self.tokens(None, Some(&refusal.message)),
            Err(refusal) => Err(refusal),
        }
    }

    fn revoke_token(&self, id: &str) -> Result<Response, Refusal> {
        self.require_admin()?;
        self.api
            .revoke(self.req.remote, self.session.role.actor(), id, self.now)?;
        Ok(see_other("/console/tokens"))
    }

    fn check_policy(&self) -> Response {
        let form = self.form();
        let text = form.get("policy").map(String::as_str).unwrap_or("");
        let mesh = self.api.state.registry().mesh_nets();
        let checked = Policy::from_json(text).and_then(|p| p.check_mesh(&mesh).map(|()| p));
        let summary;
        let reason;
        let check = match &checked {
            Ok(p) => {
                summary = p.to_string();
                Check::Valid(&summary)
            }
            Err(e) => {
                reason = e.to_string();
                Check::Invalid(&reason)
            }
        };
        self.access(Some((text, check)))
    }

    fn reload_policy(&self) -> Result<Response, Refusal> {
        self.require_admin()?;
        self.api
            .reload_policy(Some(self.req.remote), Some(self.session.role.actor()))
            .map_err(|e| {
                Refusal(
                    e.http_status(),
                    format!("{e}; the old policy stays in force"),
                )
            })?;
        Ok(see_other("/console/access"))
    }
}
