//! The single sign-on edge (`/sso/...`): a machine starts and polls its login (signed by
//! its key), a person approves it on our page and comes back from the provider to
//! `/sso/callback`, and the console logs in through the same provider. The flows are in
//! [`crate::server::sso::flows`]; admission decides in the store's write.

use super::console::Console;
use super::error::{ok_json, parse_body, Refusal};
use super::{Api, Authed};
use crate::keys::PublicKey;
use crate::proto::sso::{
    LoginPollRequest, LoginPollResponse, LoginStartRequest, LoginStartResponse,
};
use crate::server::audit::{AuditEvent, AuditKind};
use crate::server::console::form;
use crate::server::console::render::sso as pages;
use crate::server::console::session::{self, Role};
use crate::server::console::SECURITY_HEADERS;
use crate::server::http::{Body, Request, Response};
use crate::server::sso::flows::{ProviderAnswer, Sso};
use crate::server::sso::logins::{Outcome, Purpose};
use crate::server::sso::rules::ConsoleRole;
use crate::server::sso::SsoError;
use crate::server::storage::admission::IdentityLogin;
use crate::types::PeerId;
use maud::Markup;
use std::time::{Instant, SystemTime};

impl From<SsoError> for Refusal {
    fn from(e: SsoError) -> Refusal {
        Refusal(e.http_status(), e.to_string())
    }
}

fn page(status: u16, markup: Markup) -> Response {
    let mut r = Response {
        status,
        headers: vec![("Content-Type", "text/html; charset=utf-8".into())],
        body: Body::Owned(markup.into_string().into_bytes()),
    };
    for (k, v) in SECURITY_HEADERS {
        r.headers.push((k, v.into()));
    }
    r
}

fn redirect(location: &str) -> Response {
    Response {
        status: 303,
        headers: vec![
            ("Location", location.into()),
            ("Cache-Control", "no-store".into()),
        ],
        body: Body::Empty,
    }
}

fn failed_page(e: &SsoError) -> Response {
    page(e.http_status(), pages::outcome(false, &e.to_string()))
}

impl Api {
    /// Turns single sign-on on (`--oidc-issuer`).
    pub fn enable_sso(&self, sso: Sso) {
        let sso = match self.storage.login_table() {
            Some(shared) => sso.with_logins(shared),
            None => sso,
        };
        let _ = self.sso.set(sso);
    }

    /// Fetches the provider's discovery document now (at start), so the first login does
    /// not wait for it.
    pub fn sso_discover(&self) -> Result<(), SsoError> {
        match self.sso.get() {
            Some(sso) => sso.provider().metadata().map(drop),
            None => Ok(()),
        }
    }

    fn sso_enabled(&self) -> Result<&Sso, Refusal> {
        self.sso.get().ok_or_else(|| {
            Refusal(
                404,
                "this server has no single sign-on (start it with --oidc-issuer): join with \
                 --token instead"
                    .into(),
            )
        })
    }

    /// `scheme://host` as the request reached us (for our own page's URL and the default
    /// callback URL).
    fn public_base(&self, req: &Request, https: bool) -> Result<String, Refusal> {
        let host = req
            .header("host")
            .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
            .ok_or_else(|| Refusal(400, "a Host header is required".into()))?;
        Ok(format!("{}://{host}", if https { "https" } else { "http" }))
    }

    /// Every request under `/sso/`.
    pub(super) fn sso(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
        rest: &str,
    ) -> Result<Response, Refusal> {
        let sso = self.sso_enabled()?;
        let base = self.public_base(req, sso.https())?;
        match (req.method.as_str(), rest) {
            ("POST", "login") => self.sso_start(req, authed, sso, &base),
            ("POST", "poll") => self.sso_poll(req, authed, sso),
            ("GET" | "HEAD", "callback") => Ok(self.sso_callback(req, sso)),
            ("GET" | "HEAD", "console") => match self.console.get() {
                None => Err(Refusal(404, "the console is off (--no-console)".into())),
                Some(_) => {
                    self.sso_limit(req)?;
                    Ok(match sso.start_console(&base) {
                        Ok((id, url)) => {
                            redirect(&url).with_header("Set-Cookie", login_cookie(&id, sso))
                        }
                        Err(e) => failed_page(&e),
                    })
                }
            },
            ("GET" | "HEAD", other) => match other.strip_prefix("browser/") {
                Some(id) if id.ends_with("/go") => {
                    self.sso_limit(req)?;
                    Ok(self.sso_browser(sso, id, &base))
                }
                Some(id) => Ok(self.sso_browser(sso, id, &base)),
                None => Err(Refusal(404, format!("no such endpoint: /sso/{other}"))),
            },
            (method, other) => Err(Refusal(
                405,
                format!("{method} is not allowed on /sso/{other}"),
            )),
        }
    }

    /// Every login start (a machine's, the console's, the trip to the provider from our
    /// page) spends from the per-source registration budget (`--register-limit`), so
    /// nobody fills the table of waiting logins (or its device-grant threads).
    fn sso_limit(&self, req: &Request) -> Result<(), Refusal> {
        let source = req.remote.ip().to_canonical();
        self.trust
            .register_limit
            .take(source, Instant::now())
            .map_err(|wait| super::error::too_many("logins", source, wait))
    }

    /// `POST /sso/login`: a machine starts a login for its key.
    fn sso_start(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
        sso: &Sso,
        base: &str,
    ) -> Result<Response, Refusal> {
        self.sso_limit(req)?;
        let key = self.authenticate(req, authed)?;
        let body: LoginStartRequest = parse_body(req)?;
        let hostname: String = body.hostname.chars().take(64).collect();
        let started = sso.start_machine(key, hostname.clone(), base)?;
        log::info!(
            "login {} started for {hostname} ({key}) by the {} flow",
            &started.id[..8],
            started.flow
        );
        Ok(ok_json(&LoginStartResponse {
            success: true,
            login_id: started.id,
            url: started.url,
            user_code: started.user_code,
            expires_in: started.expires_in,
            flow: started.flow.to_owned(),
        }))
    }

    /// `POST /sso/poll`: where the machine's login stands. A finished login is checked
    /// against the identity rules in force, so a refused person learns why at once.
    fn sso_poll(
        &self,
        req: &Request,
        authed: &mut Option<Authed>,
        sso: &Sso,
    ) -> Result<Response, Refusal> {
        let key = self.authenticate(req, authed)?;
        let body: LoginPollRequest = parse_body(req)?;
        let answer = |status: &str, owner: Option<String>| {
            ok_json(&LoginPollResponse {
                success: true,
                status: status.to_owned(),
                owner,
            })
        };
        match sso.poll(&body.login_id, &key)? {
            Outcome::Waiting => Ok(answer("waiting", None)),
            Outcome::Failed(status, why) => {
                self.auth_failed(req, Some(key), None, &why);
                Err(Refusal(status, why))
            }
            Outcome::Done(who) => {
                let (policy, _) = self.state.policy.current();
                if let Err(e) = policy.identities().admit(&who) {
                    self.auth_failed(req, Some(key), None, &e.0);
                    return Err(Refusal(403, e.0));
                }
                Ok(answer("done", Some(who.label())))
            }
        }
    }

    /// `GET /sso/browser/ID`: the approval page, or (with `?go=1`) on to the provider.
    fn sso_browser(&self, sso: &Sso, id: &str, base: &str) -> Response {
        let (id, go) = match id.strip_suffix("/go") {
            Some(id) => (id, true),
            None => (id, false),
        };
        let looked = sso.look(id);
        let (hostname, key, code) = match looked {
            Ok((Purpose::Machine { key, hostname }, code, Outcome::Waiting)) => {
                (hostname, key, code)
            }
            Ok((_, _, Outcome::Done(who))) => {
                return page(
                    200,
                    pages::outcome(true, &format!("Already logged in as {}.", who.label())),
                )
            }
            Ok((_, _, Outcome::Failed(_, why))) => return page(403, pages::outcome(false, &why)),
            Ok((Purpose::Console, _, _)) | Err(_) => {
                return failed_page(&SsoError::UnknownLogin(id.chars().take(40).collect()))
            }
        };
        if !go {
            let link = format!("/sso/browser/{id}/go");
            return page(
                200,
                pages::approve(&hostname, &short_key(&key), &code, &link),
            );
        }
        match sso.begin_browser(id, base) {
            Ok(url) => redirect(&url).with_header("Set-Cookie", login_cookie(id, sso)),
            Err(e) => failed_page(&e),
        }
    }

    /// `GET /sso/callback?code=..&state=..`: the provider sent the person back.
    fn sso_callback(&self, req: &Request, sso: &Sso) -> Response {
        let query = req.target.split_once('?').map_or("", |(_, q)| q);
        let fields = form::fields(query.as_bytes());
        let state = fields.get("state").map(String::as_str).unwrap_or("");
        let answer = match (fields.get("code"), fields.get("error")) {
            (Some(code), None) => ProviderAnswer::Code(code.clone()),
            (_, Some(error)) => ProviderAnswer::Error(match fields.get("error_description") {
                Some(d) => format!("{error}: {d}"),
                None => error.clone(),
            }),
            (None, None) => {
                return page(
                    400,
                    pages::outcome(false, "the provider sent neither a code nor an error"),
                )
            }
        };
        let browser = form::cookie(req.header("cookie"), LOGIN_COOKIE);
        match sso.callback(state, answer, browser) {
            Err(e) => {
                self.auth_failed(req, None, None, &format!("single sign-on: {e}"));
                failed_page(&e)
            }
            Ok((Purpose::Machine { hostname, .. }, who)) => {
                let (policy, _) = self.state.policy.current();
                match policy.identities().admit(&who) {
                    Ok(_) => page(
                        200,
                        pages::outcome(
                            true,
                            &format!(
                                "Logged in as {}: {hostname} joins the mesh now. You can close \
                                 this page.",
                                who.label()
                            ),
                        ),
                    ),
                    Err(e) => page(403, pages::outcome(false, &e.0)),
                }
            }
            Ok((Purpose::Console, who)) => self.console_sso_session(req, &who),
        }
    }

    /// A console login through the provider: a session for an admin or auditor.
    fn console_sso_session(
        &self,
        req: &Request,
        who: &crate::server::sso::identity::Identity,
    ) -> Response {
        let Some(console) = self.console.get() else {
            return page(
                404,
                pages::outcome(false, "the console is off (--no-console)"),
            );
        };
        let (policy, _) = self.state.policy.current();
        let role = match policy.identities().console_role(who) {
            Some(ConsoleRole::Admin) => Role::Admin,
            Some(ConsoleRole::Auditor) => Role::Auditor,
            None => {
                let why = format!(
                    "{} logged in, but is in neither identities.admins nor identities.auditors \
                     of the policy file",
                    who.label()
                );
                self.auth_failed(req, None, None, &why);
                return page(403, pages::outcome(false, &why));
            }
        };
        open_console_session(self, console, req, role, &who.label())
    }

    /// The owner and login of the peer with `key`, when a login admitted it: refuses the
    /// key once its login ended (an admin's logout, or `--login-expiry`).
    pub(super) fn check_login_of_key(&self, key: &PublicKey) -> Result<(), Refusal> {
        self.check_login_of_peer(&PeerId::for_key(key))
    }

    /// [`Api::check_login_of_key`] by peer id.
    pub(super) fn check_login_of_peer(&self, id: &PeerId) -> Result<(), Refusal> {
        let owner = self
            .state
            .registry()
            .by_id(id)
            .and_then(|r| r.owner.clone());
        self.check_owner_login(owner)
    }

    /// `--login-expiry` (its default without single sign-on).
    pub(super) fn login_expiry(&self) -> std::time::Duration {
        self.sso
            .get()
            .map_or(crate::server::sso::DEFAULT_LOGIN_EXPIRY, Sso::login_expiry)
    }

    fn check_owner_login(
        &self,
        owner: Option<crate::server::sso::identity::Owner>,
    ) -> Result<(), Refusal> {
        let Some(owner) = owner else {
            return Ok(());
        };
        match owner.ended(self.login_expiry(), SystemTime::now()) {
            None => Ok(()),
            Some(why) => Err(Refusal(
                401,
                format!("{why}: log in again with `wgmesh up --login`"),
            )),
        }
    }

    /// `POST /admin/peers/ID/logout`: ends the peer's login now, audited.
    pub(super) fn end_login(
        &self,
        req: &Request,
        id: &PeerId,
        now: SystemTime,
        actor: &str,
    ) -> Result<Response, Refusal> {
        let Some(record) = self.storage.end_login(id, now)? else {
            return Err(super::error::unknown_peer(id));
        };
        let owner = record.owner.as_ref().map_or("", |o| o.label());
        log::info!(
            "ended the login of {owner} for {} ({})",
            record.id,
            record.hostname
        );
        self.trust.audit(
            AuditEvent::new(AuditKind::Deregistration, now)
                .source(req.remote)
                .actor(actor)
                .peer_id(record.id.clone())
                .peer_key(record.public_key)
                .detail(format!(
                    "ended the single sign-on login of {owner} for {}: it must log in again",
                    record.hostname
                )),
        );
        Ok(ok_json(&crate::proto::model::SuccessResponse {
            success: true,
        }))
    }

    /// The credential of a register request naming finished login `id`.
    pub(super) fn identity_login(
        &self,
        key: &PublicKey,
        id: &str,
    ) -> Result<IdentityLogin, Refusal> {
        let sso = self.sso_enabled()?;
        let identity = sso.take(id, key)?;
        let (policy, _) = self.state.policy.current();
        Ok(IdentityLogin {
            identity,
            rules: policy.identities().clone(),
        })
    }
}

/// The cookie that ties the provider's answer to the browser that went there (against a
/// login forced on somebody else's browser). `Lax`, since the answer comes from the
/// provider's site; only `/sso/` sees it.
const LOGIN_COOKIE: &str = "wgmesh_sso";

fn login_cookie(id: &str, sso: &Sso) -> String {
    let secure = if sso.https() { "; Secure" } else { "" };
    format!(
        "{LOGIN_COOKIE}={id}; Path=/sso/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        crate::server::sso::logins::LOGIN_LIFETIME.as_secs()
    )
}

fn short_key(key: &PublicKey) -> String {
    key.to_base64().chars().take(12).collect()
}

fn open_console_session(
    api: &Api,
    console: &Console,
    req: &Request,
    role: Role,
    who: &str,
) -> Response {
    let id = console.sessions.open(role, Instant::now());
    api.trust.audit(
        AuditEvent::new(AuditKind::ConsoleLogin, SystemTime::now())
            .source(req.remote)
            .actor(&format!("{} ({who})", role.actor()))
            .detail(format!(
                "logged in to the console through single sign-on as {who}"
            )),
    );
    let role_name = match role {
        Role::Admin => "admin",
        Role::Auditor => "auditor",
    };
    page(200, pages::console_welcome(who, role_name))
        .with_header("Set-Cookie", session::set_cookie(&id, console.secure))
}
