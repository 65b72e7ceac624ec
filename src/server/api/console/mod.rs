//! The console's HTTP edge (`/console/...`): who is asking (the session cookie), whether a
//! change may go ahead (role, CSRF token, same Origin), and which page or action answers.
//! Pages gather their data in [`pages`]; changes go through the same `Api` methods as the
//! admin API in [`actions`], so a token or a removal is made, audited and counted once.

mod actions;
mod devices;
mod pages;
mod respond;
mod subnet_routes;

use super::error::Refusal;
use super::Api;
use crate::server::console::session::{self, Role, Session};
pub use crate::server::console::state::Console;
use crate::server::console::{form, CSS, JS};
use crate::server::http::{Park, Reply, Request, Response, Wake};
use respond::{asset, html, see_other};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Longest a browser's `/console/events` poll is held.
const MAX_EVENTS_WAIT: Duration = Duration::from_secs(60);

/// A request from a logged-in browser.
struct Visit<'a> {
    api: &'a Api,
    console: &'a Console,
    req: &'a Request,
    session: Session,
    session_id: String,
    now: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Api {
    /// Turns the console on (unless `--no-console`); `secure` when the server has TLS.
    pub fn enable_console(&self, console: Console) {
        let _ = self.console.set(console);
    }

    /// Every request under `/console`.
    pub(super) fn console(&self, req: &Request) -> Result<Response, Refusal> {
        let Some(console) = self.console.get() else {
            return Err(Refusal(
                404,
                "the console is off (--no-console): use `wgmesh peers`, `wgmesh token` and /metrics"
                    .into(),
            ));
        };
        let path = req.path();
        match (req.method.as_str(), path) {
            ("GET" | "HEAD", "/console/static/console.css") => {
                return Ok(asset("text/css; charset=utf-8", CSS))
            }
            ("GET" | "HEAD", "/console/static/console.js") => {
                return Ok(asset("text/javascript; charset=utf-8", JS))
            }
            ("GET" | "HEAD", "/console" | "/console/") => return Ok(see_other("/console/peers")),
            ("GET" | "HEAD", "/console/login") => {
                let sso = self
                    .sso
                    .get()
                    .map(|_| crate::server::console::render::sso::console_link());
                return Ok(html(
                    200,
                    crate::server::console::render::login::login_with(None, sso),
                ));
            }
            ("POST", "/console/login") => return self.console_login(console, req),
            _ => {}
        }
        let Some(visit) = self.visit(console, req) else {
            return match req.method.as_str() {
                "GET" | "HEAD" => Ok(see_other("/console/login")),
                _ => Err(Refusal(
                    401,
                    "not logged in to the console (or the session expired): log in again".into(),
                )),
            };
        };
        if req.method == "POST" {
            visit.check_post()?;
            return visit.post(path);
        }
        if req.method != "GET" && req.method != "HEAD" {
            return Err(super::error::method_not_allowed(
                format!("{} is not allowed on {path}: use GET or POST", req.method),
                "GET, POST",
            ));
        }
        visit.get(path)
    }

    /// The logged-in visit a request belongs to, if its cookie names a live session.
    fn visit<'a>(&'a self, console: &'a Console, req: &'a Request) -> Option<Visit<'a>> {
        let id = form::cookie(req.header("cookie"), session::COOKIE)?;
        let session = console.sessions.find(id, Instant::now())?;
        Some(Visit {
            api: self,
            console,
            req,
            session,
            session_id: id.to_owned(),
            now: SystemTime::now(),
        })
    }

    /// `POST /console/login`: the admin or auditor secret for a session. Failures count
    /// against the source's failed-authentication budget, like every other secret.
    fn console_login(&self, console: &Console, req: &Request) -> Result<Response, Refusal> {
        self.check_failure_budget(req)?;
        let fields = form::fields(&req.body);
        let secret = fields.get("secret").map(String::as_str).unwrap_or("");
        let header = format!("Bearer {secret}");
        let role = if self.trust.admin.matches(Some(&header)) {
            Role::Admin
        } else if console.auditor.matches(Some(&header)) {
            Role::Auditor
        } else {
            self.auth_failed(req, None, None, "console login with a wrong secret");
            return Ok(html(
                401,
                crate::server::console::render::login::login(Some(
                    "That is neither the admin nor the auditor secret.",
                )),
            ));
        };
        let id = console.sessions.open(role, Instant::now());
        self.trust.audit(
            crate::server::audit::AuditEvent::new(
                crate::server::audit::AuditKind::ConsoleLogin,
                SystemTime::now(),
            )
            .source(req.remote)
            .actor(role.actor())
            .detail("logged in to the console"),
        );
        Ok(see_other("/console/peers")
            .with_header("Set-Cookie", session::set_cookie(&id, console.secure)))
    }

    /// `GET /console/events?since=V&wait=S`: the mesh version, held (without a thread)
    /// until it moves past `since` or `wait` runs out. One per open console tab.
    pub(super) fn console_events(&self, req: &Request) -> Reply {
        let authorized = self
            .console
            .get()
            .and_then(|c| self.visit(c, req))
            .is_some();
        if !authorized {
            return Reply::Now(Refusal(401, "log in to the console first".into()).into());
        }
        let since = req.query_param("since").and_then(|v| v.parse::<u64>().ok());
        let wait = req
            .query_param("wait")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs)
            .min(MAX_EVENTS_WAIT);
        let seen = self.state.changes().version();
        let version = self.state.registry().generation();
        let api = self.me.get().and_then(std::sync::Weak::upgrade);
        match (since, api) {
            (Some(s), Some(api)) if s == version && !wait.is_zero() => {
                let notifier = self.state.changes().clone();
                let deadline = Instant::now() + wait;
                Reply::Park(Park::new(&notifier, seen, deadline, move |_: Wake| {
                    Reply::Now(events_answer(api.state.registry().generation()))
                }))
            }
            _ => Reply::Now(events_answer(version)),
        }
    }

    /// Takes a sample of the counters behind the per-minute figures (every second, from
    /// the sweeper).
    pub(super) fn sample_rates(&self) {
        let Some(console) = self.console.get() else {
            return;
        };
        let now = Instant::now();
        let registrations = self.metrics.registrations_new.load(Ordering::Relaxed)
            + self.metrics.registrations_repeat.load(Ordering::Relaxed);
        let heartbeats = self.metrics.heartbeats_ok.load(Ordering::Relaxed);
        console.sample(now, registrations, heartbeats);
    }
}

fn events_answer(version: u64) -> Response {
    super::error::ok_json(&serde_json::json!({"success": true, "version": version}))
}

impl Visit<'_> {
    /// Refuses a post without the session's CSRF token or from another origin.
    fn check_post(&self) -> Result<(), Refusal> {
        let scheme = if self.console.secure { "https" } else { "http" };
        let host = self.req.header("host").unwrap_or_default();
        let same_origin = self.req.header("origin") == Some(&format!("{scheme}://{host}"));
        let fields = form::fields(&self.req.body);
        let token_ok = session::csrf_matches(&self.session, fields.get("csrf").map(String::as_str));
        if same_origin && token_ok {
            return Ok(());
        }
        let why = "cross-site request refused: a console form must be posted from the console \
                   itself, with its CSRF token (reload the page and try again)";
        self.api.auth_failed(self.req, None, None, why);
        Err(Refusal(403, why.into()))
    }

    /// Refuses a change to an auditor.
    fn require_admin(&self) -> Result<(), Refusal> {
        match self.session.role.may_change() {
            true => Ok(()),
            false => Err(Refusal(
                403,
                "the auditor role can see everything but change nothing: log in with the \
                 admin secret to do this"
                    .into(),
            )),
        }
    }

    /// The viewer for page frames.
    fn viewer(&self) -> crate::server::console::render::layout::Viewer<'_> {
        crate::server::console::render::layout::Viewer {
            role: self.session.role,
            csrf: &self.session.csrf,
        }
    }

    /// The query string's fields.
    fn query(&self) -> std::collections::HashMap<String, String> {
        let q = self.req.target.split_once('?').map_or("", |(_, q)| q);
        form::fields(q.as_bytes())
    }

    /// The form's fields.
    fn form(&self) -> std::collections::HashMap<String, String> {
        form::fields(&self.req.body)
    }
}
