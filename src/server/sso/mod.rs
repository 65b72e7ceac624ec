//! Single sign-on with the organisation's OpenID provider (`--oidc-issuer`): a machine
//! joins when a person logs in for it (`wgmesh up --login`), and the console accepts the
//! same login. This module owns the protocol side; admission
//! ([`crate::server::storage::admission`]) turns a verified [`identity::Identity`] into
//! tags by the policy file's [`rules`], inside each store's write.
//!
//! Flows: the device authorization grant (RFC 8628) when discovery lists a device endpoint,
//! else an authorization-code + PKCE login that starts on this server's own page, bound to
//! the waiting machine's key. Either way the agent polls `POST /sso/poll` and then
//! registers with the finished login.

pub mod flows;
pub mod http;
pub mod identity;
pub mod limits;
pub mod logins;
pub mod provider;
pub mod rules;
pub mod verify;

use std::fmt;
use std::time::Duration;

/// The default `--login-expiry`: a machine's login lasts 180 days, as other meshes do.
pub const DEFAULT_LOGIN_EXPIRY: Duration = Duration::from_secs(180 * 86_400);

/// Why a login step failed; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SsoError {
    /// The provider cannot be reached or answered nonsense: 503, existing peers untouched.
    Unavailable(String),
    /// The provider's token or answer was refused (forged, expired, another audience,
    /// a used code): 401.
    Token(String),
    /// The identity is not allowed by the policy file: 403, naming the rules.
    Forbidden(String),
    /// No such login (expired, used, never started): 404.
    UnknownLogin(String),
    /// Too many logins wait at once: 503.
    Busy,
    /// The table of logins in progress (the replicas' shared database) cannot be used: 503.
    Store(String),
    /// The provider or the server is set up in a way that cannot work: 500.
    Config(String),
}

impl SsoError {
    /// The HTTP status the failure is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            SsoError::Unavailable(_) | SsoError::Busy | SsoError::Store(_) => 503,
            SsoError::Token(_) => 401,
            SsoError::Forbidden(_) => 403,
            SsoError::UnknownLogin(_) => 404,
            SsoError::Config(_) => 500,
        }
    }
}

impl fmt::Display for SsoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SsoError::Unavailable(why) => write!(
                f,
                "{why}; machines already in the mesh keep working: log in again when the \
                 provider is back"
            ),
            SsoError::Token(why) | SsoError::Forbidden(why) | SsoError::Config(why) => {
                f.write_str(why)
            }
            SsoError::UnknownLogin(id) => write!(
                f,
                "no login {id} is waiting: it finished, expired (logins last {} minutes) or \
                 the server restarted; run `wgmesh up --login` again",
                limits::LOGIN_LIFETIME.as_secs() / 60
            ),
            SsoError::Busy => {
                f.write_str("too many logins are waiting at once; try again in a few minutes")
            }
            SsoError::Store(why) => write!(
                f,
                "the logins in progress cannot be read or written ({why}); try again when the \
                 database answers"
            ),
        }
    }
}

impl std::error::Error for SsoError {}
