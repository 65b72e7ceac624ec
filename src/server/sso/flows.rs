//! The login flows over the provider and the table of logins: a machine's login (device
//! grant or code + PKCE on our page), a console login, the provider's callback, and the
//! machine's polls. The HTTP edge is `crate::server::api::sso`.

use super::identity::Identity;
use super::logins::{
    short_code, CodeFlow, LoginTable, MemoryLogins, Outcome, Purpose, LOGIN_LIFETIME,
};
use super::provider::{Provider, ProviderConfig};
use super::SsoError;
use crate::keys::PublicKey;
use std::sync::Arc;
use std::time::Duration;

/// What the server is told about single sign-on.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    /// The provider and our client at it.
    pub provider: ProviderConfig,
    /// `--oidc-redirect-url`: the callback URL as registered at the provider; None derives
    /// it from the URL the request came to (scheme, Host, `/sso/callback`).
    pub redirect_url: Option<String>,
    /// `--login-expiry`: how long a machine's login admits it.
    pub login_expiry: Duration,
    /// Whether the server serves HTTPS (its own URLs start `https://`).
    pub https: bool,
    /// Use the device grant when the provider lists one (`--oidc-no-device-flow` turns it
    /// off: Google lists one that only "TV and limited input" clients may use).
    pub device_flow: bool,
}

/// A machine login just started: what the agent shows its person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineLogin {
    /// The id the agent polls with.
    pub id: String,
    /// Where the person logs in.
    pub url: String,
    /// The code to compare (or type, for the device grant).
    pub user_code: String,
    /// Seconds the login waits.
    pub expires_in: u64,
    /// `device` (RFC 8628 at the provider) or `browser` (code + PKCE via our page).
    pub flow: &'static str,
}

/// What the provider sent the browser back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderAnswer {
    /// An authorization code to exchange.
    Code(String),
    /// An `error` (and its description), e.g. `access_denied`.
    Error(String),
}

/// Single sign-on as the API uses it.
pub struct Sso {
    provider: Arc<Provider>,
    logins: Arc<dyn LoginTable>,
    redirect: Option<String>,
    login_expiry: Duration,
    https: bool,
    device_flow: bool,
}

/// The callback URL for requests that reached us at `base` (`https://host[:port]`). The
/// default port is dropped, since providers compare redirect URLs as exact strings and
/// people register them without it.
pub fn callback_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base
        .strip_suffix(":443")
        .filter(|_| base.starts_with("https://"))
        .or_else(|| {
            base.strip_suffix(":80")
                .filter(|_| base.starts_with("http://"))
        })
        .unwrap_or(base);
    format!("{base}/sso/callback")
}

impl Sso {
    /// Single sign-on over `config`; the provider is contacted on first use.
    pub fn new(config: SsoConfig) -> Sso {
        Sso {
            provider: Arc::new(Provider::new(config.provider)),
            logins: Arc::new(MemoryLogins::default()),
            redirect: config.redirect_url,
            login_expiry: config.login_expiry,
            https: config.https,
            device_flow: config.device_flow,
        }
    }

    /// The same, keeping logins in progress in `table` (the replicas' shared database)
    /// instead of this process's memory.
    pub fn with_logins(mut self, table: Arc<dyn LoginTable>) -> Sso {
        self.logins = table;
        self
    }

    /// `--login-expiry`.
    pub fn login_expiry(&self) -> Duration {
        self.login_expiry
    }

    /// Whether this server's own URLs are `https://`.
    pub fn https(&self) -> bool {
        self.https
    }

    /// The provider, for discovery at start and for tests.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    fn redirect(&self, base: &str) -> String {
        self.redirect.clone().unwrap_or_else(|| callback_url(base))
    }

    /// Starts a machine's login: the device grant when the provider offers it, else a page
    /// on this server (at `base`) that starts a code + PKCE login.
    pub fn start_machine(
        &self,
        key: PublicKey,
        hostname: String,
        base: &str,
    ) -> Result<MachineLogin, SsoError> {
        let purpose = Purpose::Machine { key, hostname };
        self.provider.rediscover()?;
        if !(self.device_flow && self.provider.has_device_flow()?) {
            let code = short_code();
            let id = self
                .logins
                .open(purpose, code.clone())?
                .ok_or(SsoError::Busy)?;
            return Ok(MachineLogin {
                url: format!("{}/sso/browser/{id}", base.trim_end_matches('/')),
                id,
                user_code: code,
                expires_in: LOGIN_LIFETIME.as_secs(),
                flow: "browser",
            });
        }
        let details = self.provider.start_device_login()?;
        let code = details.user_code().secret().clone();
        let id = self
            .logins
            .open(purpose, code.clone())?
            .ok_or(SsoError::Busy)?;
        let url = details
            .verification_uri_complete()
            .map(|u| u.secret().clone())
            .unwrap_or_else(|| details.verification_uri().to_string());
        let limit = details.expires_in().min(LOGIN_LIFETIME);
        let (provider, logins, waiting) = (self.provider.clone(), self.logins.clone(), id.clone());
        std::thread::Builder::new()
            .name("sso-device".into())
            .spawn(move || {
                let outcome = match provider.finish_device_login(&details, limit) {
                    Ok(who) => Outcome::Done(who),
                    Err(e) => Outcome::Failed(e.http_status(), e.to_string()),
                };
                if let Err(e) = logins.finish(&waiting, outcome) {
                    log::error!("cannot record the end of login {waiting}: {e}");
                }
            })
            .map_err(|e| SsoError::Config(format!("cannot start a thread: {e}")))?;
        Ok(MachineLogin {
            id,
            url,
            user_code: code,
            expires_in: limit.as_secs(),
            flow: "device",
        })
    }

    /// What the approval page shows for login `id`: who it is for and its code.
    pub fn look(&self, id: &str) -> Result<(Purpose, String, Outcome), SsoError> {
        self.logins
            .look(id)?
            .ok_or_else(|| SsoError::UnknownLogin(id.to_owned()))
    }

    /// Starts the code + PKCE half of login `id` (the person approved on our page):
    /// where to send the browser.
    pub fn begin_browser(&self, id: &str, base: &str) -> Result<String, SsoError> {
        let redirect = self.redirect(base);
        let started = self.provider.start_code_login(&redirect)?;
        let flow = CodeFlow {
            verifier: started.verifier,
            nonce: started.nonce,
            redirect,
        };
        match self.logins.attach_code(id, started.state, flow)? {
            true => Ok(started.url),
            false => Err(SsoError::UnknownLogin(id.to_owned())),
        }
    }

    /// Starts a console login: its id (for the browser's cookie) and where to send the
    /// browser.
    pub fn start_console(&self, base: &str) -> Result<(String, String), SsoError> {
        self.provider.rediscover()?;
        let id = self
            .logins
            .open(Purpose::Console, String::new())?
            .ok_or(SsoError::Busy)?;
        let url = self.begin_browser(&id, base)?;
        Ok((id, url))
    }

    /// The provider sent the browser back with `state` and a code (or an error): the login
    /// it belongs to, and who logged in. A machine login records the outcome for its
    /// polls; a console login is forgotten (the caller makes the session).
    /// `browser` is the login id the browser's cookie names: a callback arriving in
    /// another browser than the one that went to the provider (a login forced on someone
    /// else) is refused.
    pub fn callback(
        &self,
        state: &str,
        answer: ProviderAnswer,
        browser: Option<&str>,
    ) -> Result<(Purpose, Identity), SsoError> {
        let (id, purpose, flow) = self.logins.take_code(state)?.ok_or_else(|| {
            SsoError::Token(
                "this login answer is unknown or was already used (a reload or a replayed \
                 code): start the login again"
                    .into(),
            )
        })?;
        let answer = match browser == Some(id.as_str()) {
            true => answer,
            false => ProviderAnswer::Error(
                "this login was started in another browser (or its cookie is gone): start \
                 it again from the page the machine printed"
                    .into(),
            ),
        };
        let result = match answer {
            ProviderAnswer::Code(code) => {
                self.provider
                    .finish_code_login(&flow.redirect, code, flow.verifier, &flow.nonce)
            }
            ProviderAnswer::Error(error) => Err(SsoError::Token(format!(
                "the identity provider ended the login: {error}"
            ))),
        };
        match (&purpose, &result) {
            (Purpose::Console, _) => self.logins.remove(&id)?,
            (Purpose::Machine { .. }, Ok(who)) => {
                self.logins.finish(&id, Outcome::Done(who.clone()))?
            }
            (Purpose::Machine { .. }, Err(e)) => self
                .logins
                .finish(&id, Outcome::Failed(e.http_status(), e.to_string()))?,
        }
        result.map(|who| (purpose, who))
    }

    /// Where machine login `id` stands, for the machine with `key` only.
    pub fn poll(&self, id: &str, key: &PublicKey) -> Result<Outcome, SsoError> {
        match self.logins.look(id)? {
            Some((Purpose::Machine { key: k, .. }, _, outcome)) if k == *key => Ok(outcome),
            _ => Err(SsoError::UnknownLogin(id.to_owned())),
        }
    }

    /// Takes the finished login `id` of the machine with `key`, once, to register with.
    pub fn take(&self, id: &str, key: &PublicKey) -> Result<Identity, SsoError> {
        self.logins
            .take_done(id, key)?
            .ok_or_else(|| SsoError::UnknownLogin(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_url_drops_default_ports_and_keeps_others() {
        assert_eq!(
            callback_url("https://mesh.example.com:443"),
            "https://mesh.example.com/sso/callback"
        );
        assert_eq!(
            callback_url("http://127.0.0.1:80/"),
            "http://127.0.0.1/sso/callback"
        );
        assert_eq!(
            callback_url("http://127.0.0.1:8443"),
            "http://127.0.0.1:8443/sso/callback"
        );
        assert_eq!(callback_url("http://x:443"), "http://x:443/sso/callback");
    }
}
